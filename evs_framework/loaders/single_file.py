"""Civitai-style single-file SD1.5 checkpoints: one file in the original Stable Diffusion (LDM) key layout.

Loading goes through diffusers' own single-file converters; configs and the tokenizer come from a local SD1.5
diffusers folder, so nothing is downloaded. Before diffusers sees the file, its keys and shapes are checked
against the layout that folder describes: diffusers only logs unexpected keys, and missing keys fail late, as
"Cannot copy out of meta tensor", naming no key, so the check must be ours.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from evs_framework.loaders.checkpoints import read_state_dict
from evs_framework.errors import WeightsError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
COMPONENT_PREFIXES = (UNET_PREFIX, VAE_PREFIX, TEXT_ENCODER_PREFIX)
CONFIG_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer")
SD15_CONFIG_HINT = "it comes from the SD1.5 diffusers folder (registry entry 'SD', folder 'stable-diffusion-v1-5')"
# Older transformers saved this buffer; current CLIPTextModel recomputes it, so its presence is harmless.
IGNORED_KEYS = frozenset({TEXT_ENCODER_PREFIX + "text_model.embeddings.position_ids"})

UNET_TOP_LEVEL = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                  "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def load_sd15_single_file(file: Path, config_folder: Path, dtype: torch.dtype, *, vae_dtype: torch.dtype | None = None,
                          allow_pickle: bool = False) -> dict:
    """{'unet': UNet2DConditionModel, 'vae': AutoencoderKL, 'text_encoder': CLIPTextModel, 'tokenizer': CLIPTokenizer}
    from an original-layout single file, with configs and tokenizer from the diffusers folder `config_folder`. Offline.
    The VAE is read in `vae_dtype` (default: `dtype`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    file, config_folder = Path(file), Path(config_folder)
    check_config_folder(config_folder)
    checkpoint = read_state_dict(file, allow_pickle, "checkpoint")
    check_layout(file, checkpoint, config_folder)
    config = str(config_folder)
    common = dict(config=config, local_files_only=True, torch_dtype=dtype)
    return {
        "unet": UNet2DConditionModel.from_single_file(checkpoint, subfolder="unet", **common),
        "vae": AutoencoderKL.from_single_file(checkpoint, subfolder="vae", **{**common, "torch_dtype": vae_dtype or dtype}),
        # the function StableDiffusionPipeline.from_single_file uses for its CLIP text encoder
        "text_encoder": create_diffusers_clip_model_from_ldm(
            CLIPTextModel, checkpoint, subfolder="text_encoder", config=config, torch_dtype=dtype,
            local_files_only=True),
        "tokenizer": CLIPTokenizer.from_pretrained(config_folder / "tokenizer", local_files_only=True),
    }


def write_sd15_single_file(folder: Path, file: Path) -> Path:
    """The reverse: read a diffusers SD1.5 folder (unet/, vae/, text_encoder/) and write one safetensors file in the
    original LDM layout, as civitai checkpoints are laid out. Used by tests and the tiny demo zoo."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    folder, file = Path(folder), Path(file)
    missing = [name for name in ("unet", "vae", "text_encoder") if not (folder / name).is_dir()]
    if missing:
        raise WeightsError(f"{folder} is not a diffusers SD1.5 folder: it has no {', '.join(f'{m}/' for m in missing)}")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    try:
        state = {**unet_to_original(unet.state_dict(), unet.config), **vae_to_original(vae.state_dict(), vae.config),
                 **text_encoder_to_original(text_encoder.state_dict())}
    except ValueError as error:
        raise WeightsError(f"{folder} is not an SD1.5 pipeline: {error}") from error
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.partial")
    save_file({key: value.contiguous() for key, value in state.items()}, str(partial), metadata={"format": "pt"})
    os.replace(partial, file)
    return file


def check_config_folder(config_folder: Path) -> None:
    if not config_folder.is_dir():
        raise WeightsError(f"config folder {config_folder} for single-file checkpoints does not exist; "
                           f"{SD15_CONFIG_HINT}")
    missing = [f"{name}/" for name in CONFIG_SUBFOLDERS if not (config_folder / name).is_dir()]
    if missing:
        raise WeightsError(f"config folder {config_folder} is missing {', '.join(missing)}; single-file checkpoints take "
                           f"their configs and tokenizer from it, and {SD15_CONFIG_HINT}")


def check_layout(file: Path, checkpoint: dict[str, torch.Tensor], config_folder: Path) -> None:
    """Raise unless the file's UNet, VAE and text encoder keys (and shapes) are exactly those the configs call for.
    Keys outside the three components (EMA copies, noise-schedule buffers) are ignored, as diffusers ignores them."""
    if not any(key.startswith(COMPONENT_PREFIXES) for key in checkpoint):
        raise WeightsError(
            f"{file} is not an SD1.5 checkpoint in the original layout: it has no {', '.join(COMPONENT_PREFIXES)} keys "
            f"(a LoRA, or a checkpoint of another architecture?); its first keys: {first_five(sorted(checkpoint))}")
    expected = expected_original_shapes(config_folder)
    found = {key: tuple(value.shape) for key, value in checkpoint.items()
             if key.startswith(COMPONENT_PREFIXES) and key not in IGNORED_KEYS}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    # VAE attention weights may be stored as linear (out, in) or conv 1x1 (out, in, 1, 1): both load
    wrong_shape = sorted(f"{key} {list(found[key])} (expected {list(expected[key])})" for key in expected.keys() & found.keys()
                         if without_trailing_ones(found[key]) != without_trailing_ones(expected[key]))
    problems = [f"{len(keys)} {what} (first 5: {first_five(keys)})"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("keys with the wrong shape", wrong_shape)) if keys]
    if problems:
        raise WeightsError(f"{file} does not match the SD1.5 layout that {config_folder} describes: "
                           f"{'; '.join(problems)}")


def expected_original_shapes(config_folder: Path) -> dict[str, tuple[int, ...]]:
    """Original-layout key -> shape, from models built on the meta device (no memory, no weights read)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_folder / "text_encoder"))
    try:
        state = {**unet_to_original(unet.state_dict(), unet.config), **vae_to_original(vae.state_dict(), vae.config),
                 **text_encoder_to_original(text_encoder.state_dict())}
    except ValueError as error:
        raise WeightsError(f"config folder {config_folder} does not describe an SD1.5 pipeline: {error}") from error
    return {key: tuple(value.shape) for key, value in state.items()}


def unet_to_original(state: dict, config) -> dict:
    return {UNET_PREFIX + unet_key_to_original(key, config): value for key, value in state.items()}


def unet_key_to_original(key: str, config) -> str:
    """diffusers UNet2DConditionModel key -> LDM key. The LDM UNet numbers its layers in one sequence: input_blocks
    0 is conv_in, then each down block holds layers_per_block (resnet, attention) layers plus a downsampler
    (the last block has none); output_blocks run through the up blocks with layers_per_block + 1 layers each,
    the upsampler sitting after the attention when the block has one."""
    per_block = config["layers_per_block"]
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        return layer_key(f"input_blocks.{1 + block * (per_block + 1) + layer}", kind, rest)
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(match[1]) + 1) * (per_block + 1)}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, layer, rest = match[1], int(match[2]), match[3]
        return layer_key(f"middle_block.{2 * layer if kind == 'resnets' else 1}", kind, rest, position=False)
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        return layer_key(f"output_blocks.{block * (per_block + 1) + layer}", kind, rest)
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        position = 2 if "CrossAttn" in config["up_block_types"][block] else 1
        return f"output_blocks.{block * (per_block + 1) + per_block}.{position}.conv.{match[2]}"
    module, _, parameter = key.rpartition(".")
    if module in UNET_TOP_LEVEL:
        return f"{UNET_TOP_LEVEL[module]}.{parameter}"
    raise ValueError(f"UNet key {key!r} has no SD1.5 original-layout equivalent")


def layer_key(layer: str, kind: str, rest: str, position: bool = True) -> str:
    if kind == "attentions":  # transformer blocks keep their diffusers names in the original layout
        return f"{layer}.1.{rest}" if position else f"{layer}.{rest}"
    module, _, parameter = rest.rpartition(".")
    if module not in UNET_RESNET:
        raise ValueError(f"UNet resnet parameter {rest!r} has no SD1.5 original-layout equivalent")
    return f"{layer}.0.{UNET_RESNET[module]}.{parameter}" if position else f"{layer}.{UNET_RESNET[module]}.{parameter}"


def vae_to_original(state: dict, config) -> dict:
    original = {}
    for key, value in state.items():
        new_key = vae_key_to_original(key, len(config["up_block_types"]))
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # the LDM VAE's attention projections are 1x1 convolutions
        original[VAE_PREFIX + new_key] = value
    return original


def vae_key_to_original(key: str, up_block_count: int) -> str:
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{vae_resnet(match[3])}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    # the LDM decoder numbers its up blocks from the lowest resolution upwards, diffusers the other way round
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{up_block_count - 1 - int(match[1])}.block.{match[2]}.{vae_resnet(match[3])}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{up_block_count - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{vae_resnet(match[3])}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        if match[2] not in VAE_ATTENTION:
            raise ValueError(f"VAE key {key!r} has no SD1.5 original-layout equivalent")
        return f"{match[1]}.mid.attn_1.{VAE_ATTENTION[match[2]]}.{match[3]}"
    if match := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{match[1]}.norm_out.{match[2]}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", key):
        return key
    raise ValueError(f"VAE key {key!r} has no SD1.5 original-layout equivalent")


def vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def text_encoder_to_original(state: dict) -> dict:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); the original layout keeps it
    return {f"{TEXT_ENCODER_PREFIX}text_model.{key.removeprefix('text_model.')}": value for key, value in state.items()}


def without_trailing_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def first_five(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
