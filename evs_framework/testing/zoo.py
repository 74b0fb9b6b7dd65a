"""A tiny random-weight model zoo in the real on-disk formats of the weights EVS names.

The zoo looks like a user's weights folder: an SD1.5 diffusers folder, civitai-style single checkpoints (EP, RV),
a kohya-format style LoRA, AnimateDiff-Lightning's bare motion-adapter state dict and an AnimateLCM folder with its
spatial LoRA, so tests and ``evs demo`` exercise the real loading code without any download. Weights are random
(fixed seeds): outputs are noise-like.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from evs_framework.loaders.sd_layout import SD15_SCHEDULER_CONFIG, save_clip_tokenizer

ZOO_VERSION = 2  # bump when the layout changes; part of the cache marker

MARKER = "zoo.json"
# Each file or folder as a user downloads it (shared/SEED.md's list), at the path registry.yaml expects.
SD_FOLDER = "stable-diffusion-v1-5"  # diffusers folder
SINGLE_FILES = {  # civitai-style single checkpoints in the original layout: path -> weights seed
    "epiCRealism/epicrealism_naturalSinRC1VAE.safetensors": 100,
    "realisticVisionV60B1_v51VAE/realisticVisionV60B1_v51VAE.safetensors": 200,
}
WATERCOLOR_LORA = "watercolor/watercolor_style.safetensors"  # kohya layout, original (LDM) layer names
LIGHTNING_FILE = "animatediff_lightning_8step_diffusers.safetensors"  # bare MotionAdapter state dict
ANIMATELCM_FOLDER = "AnimateLCM"  # diffusers MotionAdapter folder with the spatial LoRA beside it
ANIMATELCM_LORA = "AnimateLCM_sd15_t2v_lora.safetensors"
SD_SEED, WATERCOLOR_SEED, LIGHTNING_SEED, ANIMATELCM_SEED = 0, 400, 300, 500

UNET_BLOCK_OUT_CHANNELS = (32, 64)
UNET_LAYERS_PER_BLOCK = 1
TEXT_DIM = 32


def _is_built(root: Path) -> bool:
    try:
        return json.loads((root / MARKER).read_text()).get("version") == ZOO_VERSION
    except (OSError, ValueError):
        return False


def build_tiny_zoo(root: Path) -> Path:
    """Write the zoo under root (idempotent, cached). Builds in a temporary sibling folder and moves it into place
    only when complete, so a crash never leaves a half-built zoo that looks finished. Returns root."""
    root = Path(root)
    if _is_built(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; it becomes the user's weights folder
    try:
        with _quiet_progress_bars():
            _write_zoo(staging)
        _install(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


@contextlib.contextmanager
def _quiet_progress_bars():
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # "Writing model shards" bars, once per text encoder
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _write_zoo(folder: Path) -> None:
    from diffusers import UNet2DConditionModel

    from evs_framework.testing.lora_write import write_kohya_lora
    from evs_framework.loaders.motion_adapter import write_motion_adapter_file
    from evs_framework.loaders.single_file import write_sd15_single_file

    save_text_to_image_pipeline(folder / SD_FOLDER, SD_SEED)
    for path, seed in SINGLE_FILES.items():
        source = folder / f".{seed}.diffusers"
        save_text_to_image_pipeline(source, seed)
        write_sd15_single_file(source, folder / path)
        shutil.rmtree(source)
    sd_unet = UNet2DConditionModel.from_pretrained(folder / SD_FOLDER, subfolder="unet", local_files_only=True)
    write_kohya_lora(folder / WATERCOLOR_LORA, sd_unet, rank=4, alpha=2.0, seed=WATERCOLOR_SEED, names="ldm")
    write_motion_adapter_file(make_motion_adapter(LIGHTNING_SEED), folder / LIGHTNING_FILE, "diffusers")
    make_motion_adapter(ANIMATELCM_SEED).save_pretrained(folder / ANIMATELCM_FOLDER, safe_serialization=True)
    write_kohya_lora(folder / ANIMATELCM_FOLDER / ANIMATELCM_LORA, sd_unet, rank=4, alpha=4.0, seed=ANIMATELCM_SEED,
                     names="diffusers")
    paths = [SD_FOLDER, *SINGLE_FILES, WATERCOLOR_LORA, LIGHTNING_FILE, f"{ANIMATELCM_FOLDER}/{ANIMATELCM_LORA}"]
    marker = {"version": ZOO_VERSION, "files": paths,
              "note": "random weights: outputs are noise-like; for testing the real loading path only"}
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # written last


def _install(staging: Path, root: Path) -> None:
    try:
        os.replace(staging, root)  # succeeds when root is missing or an empty folder
        return
    except OSError:
        if _is_built(root):  # a concurrent build finished first
            return
    # root holds a stale zoo (or unrelated files): swap in our entries only, with the marker last
    (root / MARKER).unlink(missing_ok=True)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == MARKER):
        if (root / entry.name).is_dir():
            shutil.rmtree(root / entry.name)
        os.replace(entry, root / entry.name)


def save_text_to_image_pipeline(folder: Path, seed: int) -> None:
    from diffusers import StableDiffusionPipeline

    tokenizer = save_tokenizer(folder / "tokenizer")
    pipeline = StableDiffusionPipeline(
        vae=make_vae(seed + 1), text_encoder=make_text_encoder(tokenizer, seed + 2), tokenizer=tokenizer,
        unet=make_unet(seed), scheduler=make_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)


def make_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        block_out_channels=UNET_BLOCK_OUT_CHANNELS, layers_per_block=UNET_LAYERS_PER_BLOCK,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    )


def make_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(  # 4 blocks -> 3 downsamplings: the real SD1.5 factor of 8
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 32), norm_num_groups=8, latent_channels=4,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215, sample_size=64,
    )


def make_text_encoder(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, vocab_size=len(tokenizer), projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD15_SCHEDULER_CONFIG)


def save_tokenizer(folder: Path):
    """Character-level CLIP BPE (no merges)."""
    return save_clip_tokenizer(folder)


def make_motion_adapter(seed: int):
    """A tiny MotionAdapter that fits the tiny UNets; heads, norm groups and sequence length are MotionAdapter's
    defaults, as in the released adapters, so a bare state dict of it loads without config overrides."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return MotionAdapter(block_out_channels=UNET_BLOCK_OUT_CHANNELS, motion_layers_per_block=UNET_LAYERS_PER_BLOCK,
                         use_motion_mid_block=False)


def make_synthetic_clip(frames: int = 8, width: int = 64, height: int = 48, seed: int = 0) -> torch.Tensor:
    """(F,3,H,W) float in [-1,1]: a smooth coloured scene with an object moving a few pixels per frame."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(3, 3, generator=generator) * 2 - 1  # background top-left, bottom-right, object
    start = torch.rand(2, generator=generator) * torch.tensor([width / 4, height / 4]) + torch.tensor([4.0, 4.0])
    step = torch.tensor([2.0, 1.0])  # pixels per frame (x, y)
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, width).view(1, width)
    blend = ((x + y) / 2).unsqueeze(0)
    background = colours[0].view(3, 1, 1) * (1 - blend) + colours[1].view(3, 1, 1) * blend
    background = background + 0.1 * torch.sin(2 * math.pi * (3 * x + 2 * y)).unsqueeze(0)
    px = torch.arange(width, dtype=torch.float32).view(1, width)
    py = torch.arange(height, dtype=torch.float32).view(height, 1)
    radius = max(3.0, min(width, height) / 6)
    clip = []
    for f in range(frames):
        cx, cy = (start + f * step).tolist()
        distance = torch.sqrt((px - cx) ** 2 + (py - cy) ** 2)
        mask = torch.clamp(radius + 0.5 - distance, 0, 1).unsqueeze(0)  # anti-aliased disc edge
        clip.append(background * (1 - mask) + colours[2].view(3, 1, 1) * mask)
    return torch.stack(clip).clamp(-1, 1)
