"""Single-file SD1.5 checkpoints in the original LDM layout: writing one from a diffusers folder, loading it back
offline through diffusers with configs from the SD1.5 folder, and refusing files that do not fit."""

import shutil
import socket

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from evs_framework.errors import WeightsError
from evs_framework.loaders.single_file import load_sd15_single_file, write_sd15_single_file
from evs_framework.testing.zoo import SD_FOLDER as SD, build_tiny_zoo, save_text_to_image_pipeline

EP = "ep-diffusers"  # an SD1.5 fine-tune as a diffusers folder, to convert to a single file
PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")


def go_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    go_offline(monkeypatch)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        go_offline(monkeypatch)
        root = build_tiny_zoo(tmp_path_factory.mktemp("zoo"))
        save_text_to_image_pipeline(root / EP, seed=100)
        return root


@pytest.fixture(scope="module")
def ep_file(zoo, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        go_offline(monkeypatch)
        return write_sd15_single_file(zoo / EP, tmp_path_factory.mktemp("single") / "ep.safetensors")


@pytest.fixture(scope="module")
def ep_folder_models(zoo):
    folder = zoo / EP
    return {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True).eval(),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True).eval(),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True).eval(),
    }


def assert_same_weights(model, reference):
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not different, different[:5]


def test_written_file_has_the_original_layout(ep_file):
    checkpoint = load_file(str(ep_file))
    assert all(key.startswith(PREFIXES) for key in checkpoint)
    for prefix in PREFIXES:
        assert any(key.startswith(prefix) for key in checkpoint), prefix
    diffusers_names = ("down_blocks", "up_blocks", "mid_block", "resnets", "time_embedding", "conv_shortcut",
                       "conv_norm_out", "group_norm", "downsamplers", "upsamplers")
    assert not [key for key in checkpoint if any(name in key for name in diffusers_names)]
    # a few keys as the original SD1.5 layout names them
    assert checkpoint["model.diffusion_model.input_blocks.0.0.weight"].shape == (32, 4, 3, 3)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in checkpoint
    # the tiny UNet has one layer per block: input_blocks 1 is block 0's layer, 2 its downsampler
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in checkpoint
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in checkpoint  # up block 0: no attention, 2 layers
    assert "model.diffusion_model.middle_block.2.out_layers.3.weight" in checkpoint
    assert checkpoint["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # stored as conv 1x1
    assert "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight" in checkpoint  # decoder numbered upwards
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in checkpoint


def test_round_trip_is_lossless_and_keeps_the_files_weights(ep_file, zoo, ep_folder_models):
    loaded = load_sd15_single_file(ep_file, zoo / SD, torch.float32)
    assert set(loaded) == {"unet", "vae", "text_encoder", "tokenizer"}
    for name, reference in ep_folder_models.items():
        assert_same_weights(loaded[name], reference)
    # the config folder supplies configs only: SD's own weights differ from what was loaded
    sd_unet = UNet2DConditionModel.from_pretrained(zoo / SD, subfolder="unet", local_files_only=True)
    assert not torch.equal(sd_unet.conv_in.weight, loaded["unet"].conv_in.weight)
    assert isinstance(loaded["tokenizer"], CLIPTokenizer)
    assert loaded["tokenizer"]("a cat").input_ids[0] == loaded["tokenizer"].bos_token_id


def test_loaded_unet_gives_the_folder_unets_output(ep_file, zoo, ep_folder_models):
    unet = load_sd15_single_file(ep_file, zoo / SD, torch.float32)["unet"]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        ours = unet(sample, 500, text).sample
        theirs = ep_folder_models["unet"](sample, 500, text).sample
    # same weights, but tensors laid out differently in memory: float32 rounding differs by ~1e-6
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_dtype_is_applied(ep_file, zoo):
    loaded = load_sd15_single_file(ep_file, zoo / SD, torch.bfloat16)
    for name in ("unet", "vae", "text_encoder"):
        assert {p.dtype for p in loaded[name].parameters()} == {torch.bfloat16}, name


def test_missing_config_folder_names_the_sd15_folder(ep_file, tmp_path):
    with pytest.raises(WeightsError, match="stable-diffusion-v1-5"):
        load_sd15_single_file(ep_file, tmp_path / "nowhere", torch.float32)


def test_config_folder_without_tokenizer_says_what_is_missing(ep_file, zoo, tmp_path):
    partial = tmp_path / "sd"
    shutil.copytree(zoo / SD, partial, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(WeightsError, match=r"missing tokenizer/.*stable-diffusion-v1-5"):
        load_sd15_single_file(ep_file, partial, torch.float32)


@pytest.mark.parametrize("wrapped", [False, True], ids=["state_dict", "lightning_wrapped"])
def test_pickled_checkpoint_needs_allow_pickle(ep_file, zoo, ep_folder_models, tmp_path, wrapped):
    checkpoint = load_file(str(ep_file))
    pickled = tmp_path / "ep.ckpt"
    torch.save({"state_dict": checkpoint, "global_step": 1} if wrapped else checkpoint, pickled)
    with pytest.raises(WeightsError, match=r"can run code.*--allow-pickle"):
        load_sd15_single_file(pickled, zoo / SD, torch.float32)
    loaded = load_sd15_single_file(pickled, zoo / SD, torch.float32, allow_pickle=True)
    for name, reference in ep_folder_models.items():
        assert_same_weights(loaded[name], reference)


def test_other_file_types_are_refused(zoo, tmp_path):
    other = tmp_path / "ep.gguf"
    other.write_bytes(b"GGUF")
    with pytest.raises(WeightsError, match="unknown weights format '.gguf'"):
        load_sd15_single_file(other, zoo / SD, torch.float32, allow_pickle=True)


def test_truncated_checkpoint_names_missing_keys(ep_file, zoo, tmp_path):
    checkpoint = load_file(str(ep_file))
    dropped = sorted(key for key in checkpoint if key.startswith("model.diffusion_model.output_blocks.1."))[:3]
    truncated = tmp_path / "truncated.safetensors"
    save_file({k: v for k, v in checkpoint.items() if k not in dropped}, str(truncated))
    with pytest.raises(WeightsError) as error:
        load_sd15_single_file(truncated, zoo / SD, torch.float32)
    message = str(error.value)
    assert str(truncated) in message and "3 missing keys" in message
    assert dropped[0] in message


def test_unrelated_keys_are_refused(zoo, tmp_path):
    unrelated = tmp_path / "lora.safetensors"
    save_file({"foo.weight": torch.zeros(2), "lora_unet_down_blocks_0.alpha": torch.ones(1)}, str(unrelated))
    with pytest.raises(WeightsError, match=r"lora\.safetensors is not an SD1\.5 checkpoint.*foo\.weight"):
        load_sd15_single_file(unrelated, zoo / SD, torch.float32)


def test_extra_component_keys_and_wrong_shapes_are_refused(ep_file, zoo, tmp_path):
    checkpoint = load_file(str(ep_file))
    extra = tmp_path / "extra.safetensors"
    save_file({**checkpoint, "model.diffusion_model.input_blocks.9.0.op.weight": torch.zeros(1)}, str(extra))
    with pytest.raises(WeightsError, match=r"1 unexpected keys.*input_blocks\.9\.0\.op\.weight"):
        load_sd15_single_file(extra, zoo / SD, torch.float32)
    inpainting = tmp_path / "inpainting.safetensors"  # an SD1.5 inpainting UNet takes 9 input channels
    save_file({**checkpoint, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)}, str(inpainting))
    with pytest.raises(WeightsError, match=r"wrong shape.*input_blocks\.0\.0\.weight \[32, 9, 3, 3\]"):
        load_sd15_single_file(inpainting, zoo / SD, torch.float32)


def test_keys_outside_the_components_are_ignored(ep_file, zoo, ep_folder_models, tmp_path):
    """Civitai files carry noise-schedule buffers and CLIP position ids; they must not block loading."""
    checkpoint = load_file(str(ep_file))
    extras = {"alphas_cumprod": torch.linspace(1, 0, 1000), "model_ema.decay": torch.tensor(0.9999),
              "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}
    civitai = tmp_path / "civitai.safetensors"
    save_file({**checkpoint, **extras}, str(civitai))
    loaded = load_sd15_single_file(civitai, zoo / SD, torch.float32)
    assert_same_weights(loaded["unet"], ep_folder_models["unet"])


def test_real_sd15_layout_round_trips_through_diffusers_converters():
    """The full-size SD1.5 UNet (4 blocks, 2 layers each, no attention in the last down / first up block) and VAE,
    on the meta device: our original-layout keys must convert back to every diffusers key with its shape."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from evs_framework.loaders.single_file import unet_to_original, vae_to_original

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # the defaults are SD1.5's
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    for model, original, convert_back in [
        (unet, unet_to_original(unet.state_dict(), unet.config), convert_ldm_unet_checkpoint),
        (vae, vae_to_original(vae.state_dict(), vae.config), convert_ldm_vae_checkpoint),
    ]:
        expected = model.state_dict()
        converted = convert_back(checkpoint=original, config=model.config)
        assert converted.keys() == expected.keys()
        assert all(converted[key].shape == expected[key].shape for key in expected)
    assert len(unet_to_original(unet.state_dict(), unet.config)) == 686  # as in the released SD1.5 checkpoints
    assert len(vae_to_original(vae.state_dict(), vae.config)) == 248
