"""The toy world's models in the real formats: their architectures, a word-level CLIP tokenizer for the world's
prompts, and the export into the layout EVS loads (a diffusers SD1.5 folder and a bare motion-adapter file).

Sizes are chosen to ship inside the package (under 40 MB in float16): a VAE of 1.7M parameters with SD's factor
of 8 (128x128 frames -> 16x16x4 latents), a 6.9M-parameter UNet, two 2.8M-parameter motion adapters with their
spatial LoRAs (ranks 32 and 16), a rank-8 style LoRA and a 2-layer text encoder whose width is the UNet's
cross-attention width.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import torch

from evs_framework.toyworld.world import (BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZE, SPEEDS, STYLES, TEXTURES,
                                          ClipSpec)
from evs_framework.loaders.sd_layout import SD15_SCHEDULER_CONFIG, save_clip_tokenizer

TEXT_DIM = 64
UNET_BLOCKS = (64, 128, 128)
LAYERS_PER_BLOCK = 1  # the motion adapter has as many motion modules per block as the UNet has resnets
VAE_BLOCKS = (32, 64, 64, 64)
LATENT_SIZE = SIZE // 8
MAX_FRAMES = 32  # the adapter's positional table: clips of up to 32 frames
SD_FOLDER = "toy-sd"
ADAPTER_FILES = {"t2v": "toy_motion_adapter.safetensors", "vc": "toy_vc_motion_adapter.safetensors"}
LORA_FILES = {"t2v": "toy_t2v_spatial_lora.safetensors", "vc": "toy_vc_spatial_lora.safetensors",
              "style": "toy_watercolor_lora.safetensors"}
TRAINING_RECORD = "training.json"
LATENT_SPACE = "toyworld"  # the name registry.yaml's toy presets declare for the toy VAE's latents
EXPORT_DIR = Path(__file__).resolve().parent.parent / "data" / "weights" / "toyworld"


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=VAE_BLOCKS, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, sample_size=SIZE, scaling_factor=1.0,  # measured after training
    )


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=UNET_BLOCKS,
        layers_per_block=LAYERS_PER_BLOCK, down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3, cross_attention_dim=TEXT_DIM, attention_head_dim=8,
        norm_num_groups=32,  # the motion modules' GroupNorms have MotionAdapter's default 32 groups too
    )


def make_motion_adapter():
    """A MotionAdapter for the UNet with MotionAdapter's default heads and norm groups (a bare state dict of it
    loads with those defaults). Each motion module's output projection starts at zero, as AnimateDiff's do, so
    the untrained motion UNet is the text-to-image UNet applied frame by frame."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter(block_out_channels=UNET_BLOCKS, motion_layers_per_block=LAYERS_PER_BLOCK,
                            motion_max_seq_length=MAX_FRAMES, use_motion_mid_block=True)
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return adapter


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, vocab_size=len(tokenizer), projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def prompt_words() -> list[str]:
    """Every word of every prompt the world can write, in a fixed order."""
    words: dict[str, None] = {}
    for shape, texture, colour, background, direction, speed, style in itertools.product(
            SHAPES, TEXTURES, COLOURS, BACKGROUNDS, DIRECTIONS, SPEEDS, ("", *STYLES)):
        spec = ClipSpec(shape, texture, colour, background, direction, speed=speed, radius=0.2, start=(0.5, 0.5),
                        texture_angle=0.0, texture_period=0.06, background_angle=0.0, style=style)
        words.update(dict.fromkeys(spec.prompt.split()))
    return list(words)


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that join each word into one token, built from its end: (e, d</w>), (r, ed</w>) for "red".

    Every merge's right side ends in </w>, so within a word only the pair at its end can ever merge, and that
    merge is always the one that grows the word's own suffix: no word's merges can break another word apart.
    """
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        suffix = word[-1] + "</w>"
        for char in reversed(word[:-1]):
            merges[(char, suffix)] = None
            suffix = char + suffix
    return list(merges)


def save_tokenizer(folder: Path):
    """A CLIP tokenizer whose vocabulary holds every prompt word as one token (any other text still tokenizes,
    byte by byte)."""
    return save_clip_tokenizer(folder, word_merges(prompt_words()))


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def export(vae, unet, text_encoder, tokenizer_folder: Path, adapters: dict, loras: dict[str, Path], folder: Path,
           record: dict) -> dict[str, int]:
    """Write the float16 diffusers folder `folder/toy-sd`, the motion adapters ({"t2v"|"vc": MotionAdapter}) as bare
    files, the LoRA files ({"t2v"|"vc"|"style": float16 file}) and `training.json`; return the bytes of each file
    written. The SD folder is built beside its place and moved in only when complete."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from evs_framework.loaders.motion_adapter import write_motion_adapter_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{SD_FOLDER}.building"
    shutil.rmtree(staging, ignore_errors=True)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder), unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(torch.float16)
    pipeline.save_pretrained(staging, safe_serialization=True)
    for name, adapter in adapters.items():
        write_motion_adapter_file(adapter.to(torch.float16), folder / ADAPTER_FILES[name], "diffusers")
    for name, lora in loras.items():
        shutil.copyfile(lora, folder / f".{LORA_FILES[name]}.partial")
        os.replace(folder / f".{LORA_FILES[name]}.partial", folder / LORA_FILES[name])
    # the slow CLIPTokenizer of older transformers reads these two; newer ones write tokenizer.json only
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(Path(tokenizer_folder) / name, staging / "tokenizer" / name)
    shutil.rmtree(folder / SD_FOLDER, ignore_errors=True)
    os.replace(staging, folder / SD_FOLDER)
    singles = [folder / ADAPTER_FILES[name] for name in adapters] + [folder / LORA_FILES[name] for name in loras]
    paths = sorted(p for p in [*(folder / SD_FOLDER).rglob("*"), *singles] if p.is_file())
    for path in paths:
        path.chmod(0o644)  # the writers' temporary files are private
    files = {str(p.relative_to(folder)): p.stat().st_size for p in paths}
    record = {**record, "files": files, "total_bytes": sum(files.values())}
    (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return files
