"""Every model name of the original EVS loads through the registry from files in its real format, and runs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evs_framework.errors import WeightsError
from evs_framework.loaders.lora import read_lora
from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.runner import run_job
from evs_framework.spec import load_spec
from evs_framework.planner import make_plan
from evs_framework.testing.zoo import ANIMATELCM_FOLDER, ANIMATELCM_LORA, SINGLE_FILES, WATERCOLOR_LORA

PROJECT_ROOT = Path(__file__).resolve().parent.parent

EP_FILE = next(iter(SINGLE_FILES))


def storages(module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


@pytest.mark.parametrize("idm,vdm,vdm_calls", [
    ("SD", "lightningSD", 2),
    ("EP", "lightningEP", 2),
    ("RV", "lightningSD", 2),
    ("watercolor", "lightningSD", 2),
    ("EP", "animatelcm", 4),  # AnimateLCM samples with guidance 1.75: two UNet calls a step
])
def test_seed_model_names_load_and_run(seed_config, tmp_path, plugins, registry, context, idm, vdm, vdm_calls):
    spec = load_spec(seed_config(idm_type=f"{idm}_X2.0", vdm_type=vdm))
    plan = make_plan(spec, registry, plugins)
    [result] = run_job(spec, plan, context, progress=False)
    assert result.error is None
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["models"] == {"idm": idm, "vdm": vdm}
    assert sidecar["unet_calls"] == {"idm": 60, "vdm": vdm_calls}  # 40 denoising, 20 capturing for using_attn
    assert sidecar["size"] == [128, 96]


def expected_fused(lora_file, base_unet, scale):
    """{module name: base weight + scale * alpha / rank * up @ down}, computed from the file's own tensors."""
    lora = read_lora(lora_file, base_unet)
    expected = {}
    for delta in lora.deltas:
        weight = base_unet.get_submodule(delta.module).weight
        rank = delta.down.shape[0]
        factor = scale * (rank if delta.alpha is None else delta.alpha) / rank
        expected[delta.module] = weight + factor * (delta.up.flatten(1) @ delta.down.flatten(1)).reshape(weight.shape)
    return expected


def test_style_lora_is_fused_into_a_copy_and_the_motion_model_keeps_the_plain_base(context, registry, zoo):
    sd = context.load(registry.get("SD")).parts
    watercolor = context.load(registry.get("watercolor")).parts
    lightning = context.load(registry.get("lightningSD"))

    expected = expected_fused(zoo / WATERCOLOR_LORA, sd.unet, scale=registry.get("watercolor").options["scale"])
    assert len(expected) > 10
    for module, weight in expected.items():
        torch.testing.assert_close(watercolor.unet.get_submodule(module).weight, weight, rtol=0, atol=1e-6)
        assert not torch.equal(watercolor.unet.get_submodule(module).weight, sd.unet.get_submodule(module).weight)
    assert not storages(watercolor.unet) & storages(sd.unet)  # two UNets held, nothing shared
    # the motion model runs over SD's own, LoRA-free modules
    assert lightning.unet.down_blocks[0].attentions is sd.unet.down_blocks[0].attentions
    assert lightning.parts is sd


def test_animatelcm_fuses_its_spatial_lora_at_its_scale(context, registry, zoo):
    entry = registry.get("animatelcm")
    assert entry.options["spatial_lora_scale"] == 0.8
    sd = context.load(registry.get("SD")).parts
    animatelcm = context.load(entry)
    expected = expected_fused(zoo / ANIMATELCM_FOLDER / ANIMATELCM_LORA, sd.unet, scale=0.8)
    motion_unet = dict(animatelcm.unet.named_modules())
    for module, weight in expected.items():
        torch.testing.assert_close(motion_unet[module].weight, weight, rtol=0, atol=1e-6)
    assert not storages(animatelcm.parts.unet) & storages(sd.unet)
    assert entry.preset.sampler == "lcm" and entry.preset.original_steps == 100


def test_single_file_without_the_sd15_config_folder_says_which_entry_supplies_it(plugins, registry, zoo, tmp_path):
    (tmp_path / "epiCRealism").mkdir()
    shutil.copy(zoo / EP_FILE, tmp_path / "epiCRealism")
    context = LoadContext(plugins, registry, WeightSettings([tmp_path]))
    with pytest.raises(WeightsError) as caught:
        context.load(registry.get("EP"))
    message = str(caught.value)
    assert "registry entry 'SD'" in message and "config_from" in message
    assert str(tmp_path / "stable-diffusion-v1-5") in message and "evs fetch SD" in message


def test_pickled_single_file_needs_allow_pickle(plugins, registry, zoo, tmp_path):
    (tmp_path / "epiCRealism").mkdir()
    torch.save(load_file(zoo / EP_FILE), tmp_path / "epiCRealism" / "epicrealism.ckpt")
    refusing = LoadContext(plugins, registry, WeightSettings([tmp_path, zoo]))
    with pytest.raises(WeightsError, match="--allow-pickle"):
        refusing.load(registry.get("EP"))
    allowing = LoadContext(plugins, registry, WeightSettings([tmp_path, zoo]), allow_pickle=True)
    reference = LoadContext(plugins, registry, WeightSettings([zoo])).load(registry.get("EP"))
    loaded = allowing.load(registry.get("EP"))
    assert torch.equal(loaded.parts.unet.conv_in.weight, reference.parts.unet.conv_in.weight)


def test_a_diffusers_folder_with_a_pickled_unet_needs_allow_pickle(plugins, registry, zoo, tmp_path):
    folder = shutil.copytree(zoo / "stable-diffusion-v1-5", tmp_path / "stable-diffusion-v1-5")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.bin is a pickled checkpoint.*--allow-pickle"):
        LoadContext(plugins, registry, WeightSettings([tmp_path])).load(registry.get("SD"))
    loaded = LoadContext(plugins, registry, WeightSettings([tmp_path]), allow_pickle=True).load(registry.get("SD"))
    reference = LoadContext(plugins, registry, WeightSettings([zoo])).load(registry.get("SD"))
    assert torch.equal(loaded.unet.conv_in.weight, reference.unet.conv_in.weight)


def test_a_folder_with_two_checkpoints_asks_which(plugins, registry, zoo, tmp_path):
    (tmp_path / "epiCRealism").mkdir()
    for name in ("v5.safetensors", "v6.safetensors"):
        shutil.copy(zoo / EP_FILE, tmp_path / "epiCRealism" / name)
    context = LoadContext(plugins, registry, WeightSettings([tmp_path, zoo]))
    with pytest.raises(WeightsError, match=r"2 candidate .*v5\.safetensors, v6\.safetensors.*keep one"):
        context.load(registry.get("EP"))


def test_comfyui_layout_lightning_file_loads_the_same_adapter(plugins, registry, zoo, tmp_path):
    from evs_framework.loaders.motion_adapter import load_motion_adapter, write_motion_adapter_file
    from evs_framework.testing.zoo import LIGHTNING_FILE

    diffusers_layout = load_motion_adapter(zoo / LIGHTNING_FILE, torch.float32)
    comfyui = write_motion_adapter_file(diffusers_layout, tmp_path / LIGHTNING_FILE, "original")
    assert any(".temporal_transformer." in key for key in load_file(comfyui))
    backend = LoadContext(plugins, registry, WeightSettings([tmp_path, zoo])).load(registry.get("lightningEP"))
    reference = LoadContext(plugins, registry, WeightSettings([zoo])).load(registry.get("lightningEP"))
    ours, theirs = backend.unet.state_dict(), reference.unet.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs if "motion_modules" in key)


@pytest.mark.parametrize("task", ["enhance", "edit", "real_edit", "style"])
def test_task_configs_plan_and_run_on_the_tiny_stand_ins(task, tmp_path, clip_file, plugins, registry, context):
    config = json.loads((PROJECT_ROOT / "configs" / f"{task}.json").read_text())
    assert load_spec(PROJECT_ROOT / "configs" / f"{task}.json").inputs  # the shipped file loads as it is
    config["mp4_files"] = [str(clip_file)]
    (tmp_path / f"{task}.json").write_text(json.dumps(config))
    spec = load_spec(tmp_path / f"{task}.json")
    [result] = run_job(spec, make_plan(spec, registry, plugins), context, progress=False)
    assert result.error is None and result.output.is_file()


def test_a_diffusers_format_style_lora_loads_through_the_registry(plugins, registry, zoo, tmp_path):
    from diffusers import UNet2DConditionModel

    from evs_framework.testing.lora_write import write_diffusers_lora

    sd_unet = UNet2DConditionModel.from_pretrained(zoo / "stable-diffusion-v1-5", subfolder="unet")
    lora_file = write_diffusers_lora(tmp_path / "watercolor" / "pytorch_lora_weights.safetensors", sd_unet, rank=4,
                                     alpha=8.0, seed=7)
    watercolor = LoadContext(plugins, registry, WeightSettings([tmp_path, zoo])).load(registry.get("watercolor"))
    for module, weight in expected_fused(lora_file, sd_unet, scale=1.0).items():
        torch.testing.assert_close(watercolor.unet.get_submodule(module).weight, weight, rtol=0, atol=1e-6)


def test_a_checkpoint_that_does_not_fit_names_the_file_and_keys(plugins, registry, zoo, tmp_path):
    from safetensors.torch import save_file

    checkpoint = load_file(zoo / EP_FILE)
    dropped = sorted(k for k in checkpoint if k.startswith("model.diffusion_model.middle_block."))
    broken = tmp_path / "epiCRealism" / "epicrealism_broken.safetensors"
    broken.parent.mkdir()
    save_file({k: v for k, v in checkpoint.items() if k not in dropped}, broken)
    with pytest.raises(WeightsError) as caught:
        LoadContext(plugins, registry, WeightSettings([tmp_path, zoo])).load(registry.get("EP"))
    message = str(caught.value)
    assert str(broken) in message and f"{len(dropped)} missing keys" in message and dropped[0] in message


@pytest.mark.parametrize("task", ["enhance", "edit", "real_edit", "style"])
def test_native_task_specs_plan_as_the_original_configs(task, plugins, registry):
    original = load_spec(PROJECT_ROOT / "configs" / f"{task}.json")
    native = load_spec(PROJECT_ROOT / "configs" / "native" / f"{task}.yaml")
    assert [i.video for i in native.inputs] == [i.video for i in original.inputs]
    assert (native.settings, native.using_attn, native.injection) == (original.settings, original.using_attn,
                                                                      original.injection)
    assert make_plan(native, registry, plugins) == make_plan(original, registry, plugins)
