"""LoRA files in the kohya (LDM or diffusers names) and diffusers formats, fused as W += s * alpha/rank * up @ down."""

import json
import re

import attrs
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from evs_framework.testing import lora_write
from evs_framework.errors import WeightsError
from evs_framework.loaders.lora import fuse_lora, read_lora
from evs_framework.testing.lora_write import write_diffusers_lora, write_kohya_lora
from evs_framework.testing.zoo import make_text_encoder, make_unet, save_tokenizer

SCALE = 0.75
# The tiny zoo UNet's attention blocks by their LDM names (one layer per block, two blocks: conv_in is input 0,
# down block 0 is input 1 and its downsampler input 2; up block 0 has no attention; up block 1 is outputs 2 and 3).
TINY_LDM_ATTENTIONS = {"input_blocks_1_1": "down_blocks.0.attentions.0", "middle_block_1": "mid_block.attentions.0",
                       "output_blocks_2_1": "up_blocks.1.attentions.0", "output_blocks_3_1": "up_blocks.1.attentions.1"}
# Layer names as civitai SD1.5 LoRAs spell them -> the diffusers module (the SD1.5 LDM -> diffusers convention).
SD15_NAMES = {f"lora_unet_{ldm}": module for ldm, module in {
    "time_embed_0": "time_embedding.linear_1",
    "input_blocks_1_1_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "input_blocks_2_1_proj_in": "down_blocks.0.attentions.1.proj_in",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks_8_1_transformer_blocks_0_attn2_to_k": "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
    "input_blocks_11_0_emb_layers_1": "down_blocks.3.resnets.1.time_emb_proj",
    "middle_block_0_in_layers_2": "mid_block.resnets.0.conv1",
    "middle_block_1_transformer_blocks_0_ff_net_0_proj": "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "middle_block_2_out_layers_3": "mid_block.resnets.1.conv2",
    "output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_3_1_proj_out": "up_blocks.1.attentions.0.proj_out",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_8_2_conv": "up_blocks.2.upsamplers.0.conv",
    "output_blocks_11_1_transformer_blocks_0_attn1_to_out_0":
        "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0",
}.items()}
# every layer kind the LDM names cover: attention, resnet, down/upsampler and time embedding
ALL_LDM_KINDS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "time_emb_proj",
                 "conv_shortcut", "conv", "linear_1", "linear_2")


@attrs.frozen
class Format:
    name: str
    write: object
    read_as: str  # LoraFile.format read_lora must report


FORMATS = [
    Format("kohya-ldm", lambda f, u, t: write_kohya_lora(f, u, t, rank=4, alpha=2.0, names="ldm"), "kohya-ldm-names"),
    Format("kohya-diffusers-names", lambda f, u, t: write_kohya_lora(f, u, t, rank=4, alpha=2.0, names="diffusers"),
           "kohya-diffusers-names"),
    Format("diffusers-alpha", lambda f, u, t: write_diffusers_lora(f, u, t, rank=3, alpha=6.0), "diffusers"),
    Format("diffusers-no-alpha", lambda f, u, t: write_diffusers_lora(f, u, t, rank=4), "diffusers"),
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are tiny: a second intra-op thread only waits, and on a busy 2-core machine that waiting
    turns milliseconds of fusing into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return save_tokenizer(tmp_path_factory.mktemp("lora") / "tok")


@pytest.fixture
def models(tokenizer):
    return make_unet(0), make_text_encoder(tokenizer, 1)


def make_sd15_layout_unet():
    """SD1.5's block layout (4 down blocks, 2 layers each, 3 with attention) at tiny widths."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8, norm_num_groups=32)


def file_layers(path) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {"down", "up"[, "alpha"]}} as the file holds them (kohya and diffusers key endings)."""
    suffixes = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
                ".lora_A.weight": "down", ".lora_B.weight": "up"}
    layers = {}
    for key, tensor in load_file(path).items():
        suffix = next(s for s in suffixes if key.endswith(s))
        layers.setdefault(key.removesuffix(suffix), {})[suffixes[suffix]] = tensor
    return layers


def metadata_alphas(path) -> dict[str, float]:
    with safe_open(path, "pt") as handle:
        raw = (handle.metadata() or {}).get("lora_adapter_metadata")
    config = json.loads(raw) if raw else {}
    return {target: config[f"{target}.lora_alpha"] for target in ("unet", "text_encoder")
            if f"{target}.lora_alpha" in config}


def legacy_clip_name(name: str) -> str:
    return name if name.startswith("text_model.") else f"text_model.{name}"


def module_of(layer: str, unet, text_encoder) -> tuple[str, str]:
    """(target, module) a file layer names, worked out here from the naming conventions, not by lora.py."""
    unet_names = {n.replace(".", "_"): n for n, _ in unet.named_modules()}
    clip_names = {legacy_clip_name(n): n for n, _ in text_encoder.named_modules()}
    if layer.startswith("lora_te_"):
        return "text_encoder", {k.replace(".", "_"): n for k, n in clip_names.items()}[layer.removeprefix("lora_te_")]
    if layer.startswith("lora_unet_"):
        name = layer.removeprefix("lora_unet_")
        for ldm, path in TINY_LDM_ATTENTIONS.items():
            if name.startswith(f"{ldm}_"):
                name = path.replace(".", "_") + name.removeprefix(ldm)
        return "unet", unet_names[name]
    target, _, name = layer.partition(".")
    return target, (clip_names[name] if target == "text_encoder" else name)


def expected_deltas(path, unet, text_encoder, scale) -> dict[str, torch.Tensor]:
    """{"<target>.<module>.weight": scale * alpha / rank * up @ down} from the file's own tensors and metadata."""
    configured = metadata_alphas(path)
    models = {"unet": unet, "text_encoder": text_encoder}
    deltas = {}
    for layer, parts in file_layers(path).items():
        target, module = module_of(layer, unet, text_encoder)
        rank = parts["down"].shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else configured.get(target, rank)
        shape = models[target].get_submodule(module).weight.shape
        product = (parts["up"].flatten(1) @ parts["down"].flatten(1)).reshape(shape)
        deltas[f"{target}.{module}.weight"] = scale * alpha / rank * product
    return deltas


def targeted_module_count(unet, text_encoder) -> int:
    """q/k/v/out of every UNet attention, proj_in/out of every transformer, q/k/v/out/fc1/fc2 of every CLIP layer."""
    count = sum(4 for m in unet.modules() if isinstance(m, Attention))
    count += sum(2 for m in unet.modules() if isinstance(m, Transformer2DModel))
    return count + sum(6 for m in text_encoder.modules() if isinstance(m, CLIPEncoderLayer))


def snapshot(unet, text_encoder=None) -> dict[str, torch.Tensor]:
    tensors = {f"unet.{k}": v.clone() for k, v in unet.state_dict().items()}
    if text_encoder is not None:
        tensors |= {f"text_encoder.{k}": v.clone() for k, v in text_encoder.state_dict().items()}
    return tensors


def unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 7, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def save_layers(path, layers: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]], extra=None):
    """A kohya-style file from {layer: (down, up)}; None leaves that part out."""
    tensors = dict(extra or {})
    for layer, (down, up) in layers.items():
        if down is not None:
            tensors[f"{layer}.lora_down.weight"] = down.clone()  # safetensors refuses tensors that share memory
        if up is not None:
            tensors[f"{layer}.lora_up.weight"] = up.clone()
    save_file(tensors, path)
    return path


def fitting_pair(module, rank=2, seed=0):
    """Random (down, up) shaped for module: conv LoRAs keep the kernel on down and 1x1 on up."""
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features, *kernel = module.weight.shape
    return (torch.randn(rank, in_features, *kernel, generator=generator),
            torch.randn(out_features, rank, *[1] * len(kernel), generator=generator))


@pytest.mark.parametrize("form", FORMATS, ids=lambda f: f.name)
def test_every_layer_maps_and_fuses_as_scaled_up_times_down(form, models, tmp_path):
    unet, text_encoder = models
    path = form.write(tmp_path / "style.safetensors", unet, text_encoder)
    written = file_layers(path)
    lora = read_lora(path, unet, text_encoder)
    assert lora.format == form.read_as
    assert len(lora.deltas) == len(written) == targeted_module_count(unet, text_encoder)
    assert {(d.target, d.module) for d in lora.deltas} == {module_of(layer, unet, text_encoder) for layer in written}

    before = snapshot(unet, text_encoder)
    assert fuse_lora(lora, unet, text_encoder, scale=SCALE) == len(written)
    after = snapshot(unet, text_encoder)
    deltas = expected_deltas(path, unet, text_encoder, SCALE)
    assert {key.partition(".")[0] for key in deltas} == {"unet", "text_encoder"}
    for key, delta in deltas.items():
        assert not torch.equal(after[key], before[key]), key
        torch.testing.assert_close(after[key], before[key] + delta)
    for key in before.keys() - deltas.keys():
        assert torch.equal(after[key], before[key]), f"{key} changed but no LoRA layer targets it"


@pytest.mark.parametrize("make", [make_unet, lambda seed: make_sd15_layout_unet()], ids=["tiny", "sd15-layout"])
def test_ldm_and_diffusers_names_of_the_same_tensors_fuse_to_the_same_unet(make, tmp_path):
    base = make(0)
    ldm = write_kohya_lora(tmp_path / "ldm.safetensors", base, names="ldm", seed=3, targets=ALL_LDM_KINDS)
    diffusers = write_kohya_lora(tmp_path / "diffusers.safetensors", base, names="diffusers", seed=3,
                                 targets=ALL_LDM_KINDS)
    ldm_layers, diffusers_layers = file_layers(ldm), file_layers(diffusers)
    assert len(ldm_layers) == len(diffusers_layers) and not ldm_layers.keys() & diffusers_layers.keys()
    assert any(layer.startswith("lora_unet_input_blocks_") for layer in ldm_layers)

    fused = []
    for path, expected_format in ((ldm, "kohya-ldm-names"), (diffusers, "kohya-diffusers-names")):
        unet = make(0)
        lora = read_lora(path, unet)
        assert lora.format == expected_format and len(lora.deltas) == len(ldm_layers)
        fuse_lora(lora, unet)
        fused.append(unet.state_dict())
    base_weights = base.state_dict()
    assert any(not torch.equal(fused[0][k], base_weights[k]) for k in base_weights)
    for key in base_weights:
        assert torch.equal(fused[0][key], fused[1][key]), key


def test_civitai_sd15_ldm_names_map_to_the_diffusers_modules(tmp_path):
    unet = make_sd15_layout_unet()
    layers = {layer: fitting_pair(unet.get_submodule(module), seed=i)
              for i, (layer, module) in enumerate(SD15_NAMES.items())}
    lora = read_lora(save_layers(tmp_path / "civitai.safetensors", layers), unet)
    assert lora.format == "kohya-ldm-names" and len(lora.deltas) == len(SD15_NAMES)
    for delta in lora.deltas:
        layer = next(name for name, (down, _) in layers.items() if torch.equal(down, delta.down))
        assert (delta.target, delta.module) == ("unet", SD15_NAMES[layer])


def test_text_encoder_layers_fuse_into_the_clip_text_model(models, tokenizer, tmp_path):
    unet, text_encoder = models
    path = write_kohya_lora(tmp_path / "te.safetensors", unet, text_encoder, targets=("q_proj", "out_proj", "fc1"))
    lora = read_lora(path, unet, text_encoder)
    assert {d.target for d in lora.deltas} == {"text_encoder"}
    assert len(lora.deltas) == 3 * sum(isinstance(m, CLIPEncoderLayer) for m in text_encoder.modules())
    ids = tokenizer("a red ball", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        base_hidden = text_encoder(ids).last_hidden_state
    unet_before = snapshot(unet)
    fuse_lora(lora, unet, text_encoder)
    with torch.no_grad():
        assert not torch.allclose(text_encoder(ids).last_hidden_state, base_hidden)
    assert all(torch.equal(v, unet_before[k]) for k, v in snapshot(unet).items())


@pytest.mark.parametrize("write", [write_kohya_lora, write_diffusers_lora], ids=["kohya", "diffusers"])
def test_text_encoder_layers_without_a_text_encoder_say_to_pass_it(write, models, tmp_path):
    unet, text_encoder = models
    path = write(tmp_path / "both.safetensors", unet, text_encoder)
    with pytest.raises(WeightsError, match="pass the text encoder"):
        read_lora(path, unet)
    lora = read_lora(path, unet, text_encoder)
    before = snapshot(unet)
    with pytest.raises(WeightsError, match="pass the text_encoder"):
        fuse_lora(lora, unet)
    assert all(torch.equal(v, before[k]) for k, v in snapshot(unet).items())


def test_scale_zero_changes_nothing(models, tmp_path):
    unet, text_encoder = models
    lora = read_lora(write_kohya_lora(tmp_path / "l.safetensors", unet, text_encoder), unet, text_encoder)
    before = snapshot(unet, text_encoder)
    assert fuse_lora(lora, unet, text_encoder, scale=0) == 0
    assert all(torch.equal(v, before[k]) for k, v in snapshot(unet, text_encoder).items())


def test_fused_unet_output_equals_weights_set_by_hand(models, tmp_path):
    unet, text_encoder = models
    path = write_kohya_lora(tmp_path / "l.safetensors", unet, names="ldm", seed=1)
    base_output = unet_output(unet)
    fuse_lora(read_lora(path, unet), unet, scale=SCALE)
    fused_output = unet_output(unet)
    assert not torch.allclose(fused_output, base_output, rtol=0, atol=1e-4)

    by_hand = make_unet(0)
    with torch.no_grad():
        for key, delta in expected_deltas(path, by_hand, text_encoder, SCALE).items():
            by_hand.get_parameter(key.removeprefix("unet.")).add_(delta)
    torch.testing.assert_close(fused_output, unet_output(by_hand))


def test_a_lora_that_does_not_fit_leaves_the_model_untouched(models, tmp_path):
    unet, _ = models
    lora = read_lora(write_kohya_lora(tmp_path / "l.safetensors", unet, names="diffusers"), unet)
    other = make_sd15_layout_unet()  # same module names in places, other widths in others
    before = snapshot(other)
    with pytest.raises(WeightsError, match="does not fit"):
        fuse_lora(lora, other)
    assert all(torch.equal(v, before[k]) for k, v in snapshot(other).items())


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickled_lora_files_are_refused(suffix, models, tmp_path):
    path = tmp_path / f"style{suffix}"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=r"must be \.safetensors.*pickled"):
        read_lora(path, models[0])


def test_a_missing_file_is_named(models, tmp_path):
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "gone.safetensors")) + ".*does not exist"):
        read_lora(tmp_path / "gone.safetensors", models[0])


@pytest.mark.parametrize("keep", [0, 6, 0.5], ids=["empty", "cut-in-header", "cut-in-tensors"])
def test_a_truncated_file_says_to_download_again(keep, models, tmp_path):
    unet, _ = models
    path = write_kohya_lora(tmp_path / "l.safetensors", unet)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(WeightsError, match="could not be read.*download it again"):
        read_lora(path, unet)


def test_keys_that_match_no_layer_are_listed(models, tmp_path):
    unet, _ = models
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    fits = fitting_pair(unet.get_submodule(module))
    path = save_layers(tmp_path / "l.safetensors", {f"lora_unet_{module.replace('.', '_')}": fits,
                                                     "lora_unet_down_blocks_9_attentions_0_proj_in": fits})
    with pytest.raises(WeightsError, match=re.escape("lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight")):
        read_lora(path, unet)


def test_a_layer_that_does_not_fit_gives_both_shapes(models, tmp_path):
    unet, _ = models
    module = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    out_features, in_features = module.weight.shape
    down, up = torch.randn(2, in_features + 16), torch.randn(out_features, 2)
    path = save_layers(tmp_path / "l.safetensors",
                       {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (down, up)})
    shapes = f"{re.escape(str(tuple(module.weight.shape)))}.*{re.escape(str(tuple(down.shape)))}"
    with pytest.raises(WeightsError, match=f"does not fit.*{shapes}"):
        read_lora(path, unet)


def test_a_layer_with_down_but_no_up_is_incomplete(models, tmp_path):
    unet, _ = models
    down, _ = fitting_pair(unet.get_submodule("mid_block.attentions.0.proj_in"))
    path = save_layers(tmp_path / "l.safetensors", {"lora_unet_mid_block_attentions_0_proj_in": (down, None)})
    with pytest.raises(WeightsError, match="'lora_unet_mid_block_attentions_0_proj_in' has no up weight"):
        read_lora(path, unet)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(models, tmp_path, monkeypatch):
    unet, _ = models
    path = write_kohya_lora(tmp_path / "l.safetensors", unet)
    old = path.read_bytes()

    def fail_halfway(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(lora_write, "save_file", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_diffusers_lora(path, unet, alpha=1.0)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
