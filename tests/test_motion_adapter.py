"""Motion adapter files: diffusers folder, Lightning's diffusers-layout file and the original/ComfyUI layout."""

import pytest
import torch
from diffusers import MotionAdapter
from safetensors.torch import load_file, save_file

from evs_framework.errors import WeightsError
from evs_framework.loaders.motion_adapter import (
    detect_layout, infer_motion_adapter_config, load_motion_adapter, motion_adapter_from_state_dict,
    write_motion_adapter_file,
)
from evs_framework.testing.zoo import ANIMATELCM_FOLDER

HEADS = {"motion_num_attention_heads": 8}  # given explicitly, as a user would for an adapter with other heads
SHAPE_CONFIG = ("block_out_channels", "motion_layers_per_block", "motion_transformer_layers_per_block",
                "motion_num_attention_heads", "motion_norm_num_groups", "motion_max_seq_length", "use_motion_mid_block")


@pytest.fixture(scope="module")
def folder_adapter(zoo):
    return load_motion_adapter(zoo / ANIMATELCM_FOLDER, torch.float32)


def shape_config(adapter) -> dict:
    return {key: tuple(v) if isinstance(v := adapter.config[key], list) else v for key in SHAPE_CONFIG}


def assert_same_adapter(loaded, reference):
    assert shape_config(loaded) == shape_config(reference)
    loaded_state, reference_state = loaded.state_dict(), reference.state_dict()
    assert loaded_state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        assert torch.equal(loaded_state[key], value), key


def test_folder_loads_with_from_pretrained(folder_adapter):
    assert isinstance(folder_adapter, MotionAdapter)
    assert tuple(folder_adapter.config.block_out_channels) == (32, 64)
    assert folder_adapter.dtype == torch.float32


@pytest.mark.parametrize("layout,marker", [("diffusers", "down_blocks.0.motion_modules.0.proj_in.weight"),
                                           ("original", "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight")])
def test_file_layouts_load_exactly(folder_adapter, tmp_path, layout, marker):
    file = write_motion_adapter_file(folder_adapter, tmp_path / f"adapter_{layout}.safetensors", layout)
    state = load_file(file)
    assert marker in state and detect_layout(state) == layout
    loaded = load_motion_adapter(file, torch.float32, config_overrides=HEADS)
    assert_same_adapter(loaded, folder_adapter)


def test_original_layout_keeps_each_attention_blocks_positional_table(folder_adapter, tmp_path):
    state = load_file(write_motion_adapter_file(folder_adapter, tmp_path / "a.safetensors", "original"))
    stem = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks"
    assert state[f"{stem}.0.pos_encoder.pe"].shape == state[f"{stem}.1.pos_encoder.pe"].shape == (1, 32, 32)
    assert not any(".attn1." in k or ".norm1." in k for k in state)


def test_original_layout_keeps_the_positional_table_length(tmp_path):
    """diffusers' converter drops the tables (fixed sinusoids); their length, the longest clip (24 frames in
    AnimateDiff v1), is read from the file first, and tables of two lengths are refused."""
    torch.manual_seed(0)
    reference = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, use_motion_mid_block=False,
                              motion_max_seq_length=24)
    file = write_motion_adapter_file(reference, tmp_path / "v1.safetensors", "original")
    assert_same_adapter(load_motion_adapter(file, torch.float32), reference)

    state = load_file(file)
    key = next(k for k in state if k.endswith(".attention_blocks.1.pos_encoder.pe"))
    state[key] = torch.zeros(1, 16, state[key].shape[2])
    save_file(state, tmp_path / "mixed.safetensors")
    with pytest.raises(WeightsError, match=r"mixed.safetensors \(original layout\): positional tables of different "
                                           r"lengths \[16, 24\]"):
        load_motion_adapter(tmp_path / "mixed.safetensors", torch.float32)


def test_loading_in_half_precision(folder_adapter, tmp_path):
    file = write_motion_adapter_file(folder_adapter, tmp_path / "a.safetensors", "diffusers")
    loaded = load_motion_adapter(file, torch.float16, config_overrides=HEADS)
    assert all(v.dtype == torch.float16 for v in loaded.state_dict().values())


def test_missing_positional_tables_are_recomputed(folder_adapter, tmp_path):
    """diffusers' own single-file converter drops them; they are fixed sinusoids, not weights."""
    state = {k: v for k, v in folder_adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    save_file(state, tmp_path / "no_pe.safetensors")
    assert_same_adapter(load_motion_adapter(tmp_path / "no_pe.safetensors", torch.float32, HEADS), folder_adapter)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_truncated_file_names_missing_keys(folder_adapter, tmp_path, layout):
    state = load_file(write_motion_adapter_file(folder_adapter, tmp_path / "full.safetensors", layout))
    dropped = sorted(k for k in state if "proj_out" in k and k.startswith("up_blocks.1"))
    save_file({k: v for k, v in state.items() if k not in dropped}, tmp_path / "truncated.safetensors")
    with pytest.raises(WeightsError) as error:
        load_motion_adapter(tmp_path / "truncated.safetensors", torch.float32, HEADS)
    message = str(error.value)
    assert "truncated.safetensors" in message and f"{layout} layout" in message
    assert "missing keys" in message and "up_blocks.1.motion_modules" in message and "proj_out" in message


def test_unrelated_keys_are_named(folder_adapter, tmp_path):
    state = {k: v.contiguous() for k, v in folder_adapter.state_dict().items()}
    state["conv_out.weight"] = torch.zeros(4, 4)
    save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(WeightsError, match=r"1 unexpected keys \(first 5: conv_out.weight\)"):
        load_motion_adapter(tmp_path / "extra.safetensors", torch.float32, HEADS)

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, tmp_path / "unet.safetensors")
    with pytest.raises(WeightsError) as error:
        load_motion_adapter(tmp_path / "unet.safetensors", torch.float32)
    message = str(error.value)
    assert "unknown layout" in message and "unexpected keys" in message and "missing keys" in message
    assert "model.diffusion_model.input_blocks.0.0.weight" in message


def test_mis_shaped_keys_are_named(folder_adapter, tmp_path):
    state = {k: v.contiguous() for k, v in folder_adapter.state_dict().items()}
    key = "up_blocks.0.motion_modules.0.proj_out.weight"
    state[key] = torch.zeros(64, 32)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match=f"mis-shaped keys .*{key}"):
        load_motion_adapter(tmp_path / "bad.safetensors", torch.float32, HEADS)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickles_need_allow_pickle(folder_adapter, tmp_path, suffix):
    file = write_motion_adapter_file(folder_adapter, tmp_path / f"adapter{suffix}", "original")
    with pytest.raises(WeightsError, match="pickle"):
        load_motion_adapter(file, torch.float32, HEADS)
    assert_same_adapter(load_motion_adapter(file, torch.float32, HEADS, allow_pickle=True), folder_adapter)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_motion_adapter(tmp_path / "nope.safetensors", torch.float32)
    (tmp_path / "adapter.gguf").write_bytes(b"GGUF")
    with pytest.raises(WeightsError, match="unknown weights format"):
        load_motion_adapter(tmp_path / "adapter.gguf", torch.float32)


def test_config_inference_on_shapes_only():
    with torch.device("meta"):
        adapter = MotionAdapter(block_out_channels=(32, 64, 96), motion_layers_per_block=(1, 2, 1),
                                motion_transformer_layers_per_block=2, motion_max_seq_length=24,
                                motion_norm_num_groups=32, motion_num_attention_heads=2)
    assert infer_motion_adapter_config(adapter.state_dict()) == {
        "block_out_channels": (32, 64, 96), "motion_layers_per_block": (1, 2, 1),
        "motion_transformer_layers_per_block": 2, "use_motion_mid_block": True,
        "motion_mid_block_layers_per_block": 1, "motion_transformer_layers_per_mid_block": 1,
        "motion_max_seq_length": 24,
    }


def test_default_adapter_state_dict_loads_without_overrides():
    """AnimateDiff-Lightning's diffusers file is a state dict of MotionAdapter() (~450M parameters, ~6 s on CPU)."""
    reference = MotionAdapter()
    loaded = motion_adapter_from_state_dict(reference.state_dict(), torch.float32)
    assert_same_adapter(loaded, reference)
