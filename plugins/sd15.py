"""Backend kind `sd15`: SD1.5-family text-to-image models from a local diffusers folder.

The frames of a clip are denoised as a batch of independent images.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from evs_framework.errors import WeightsError
from evs_framework.hookspecs import hookimpl

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer")


@attrs.frozen
class SD15Parts:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def load_sd15_parts(folder: Path, context) -> SD15Parts:
    """The components of a diffusers SD1.5 folder, loaded once per run and folder."""
    missing = [name for name in REQUIRED_SUBFOLDERS if not (folder / name).is_dir()]
    if missing:
        raise WeightsError(f"{folder} is not a diffusers SD1.5 folder: it lacks {', '.join(missing)}/; "
                           f"point the registry entry at a folder saved with save_pretrained")

    def build() -> SD15Parts:
        options = {"local_files_only": True, "torch_dtype": context.dtype}
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **options)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **{**options, "torch_dtype": context.vae_dtype})
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **options)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        for module in (unet, vae, text_encoder):
            module.to(context.device).eval().requires_grad_(False)
        return SD15Parts(unet, vae, text_encoder, tokenizer)

    return context.shared(("sd15", folder.resolve()), build)


@torch.no_grad()
def encode_prompts(parts: SD15Parts, prompts: list[str]) -> torch.Tensor:
    ids = parts.tokenizer(prompts, padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    return parts.text_encoder(ids.to(parts.text_encoder.device))[0]


@attrs.frozen
class SD15Backend:
    parts: SD15Parts
    frames_as_batch = True

    @property
    def vae(self):
        return self.parts.vae

    def encode_prompts(self, prompts):
        return encode_prompts(self.parts, prompts)

    @torch.no_grad()
    def predict_noise(self, x, timestep, text):
        batch, frames = x.shape[:2]
        unet = self.parts.unet
        eps = unet(x.flatten(0, 1).to(unet.dtype), timestep,
                   encoder_hidden_states=text.repeat_interleave(frames, dim=0).to(unet.dtype)).sample
        return eps.float().unflatten(0, (batch, frames))


def load_sd15(entry, context) -> SD15Backend:
    return SD15Backend(load_sd15_parts(context.weights_path(entry), context))


@hookimpl
def register_backends(register):
    register("sd15", load_sd15)
