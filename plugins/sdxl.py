"""Backend kind `sdxl`: SDXL-family text-to-image models from a diffusers folder.

The folder (stabilityai/stable-diffusion-xl-base-1.0 as downloaded) holds unet/, vae/, text_encoder/ and
text_encoder_2/ with their tokenizers. Prompts are read as SDXL's pipeline reads them: both encoders' penultimate
hidden states side by side, and the second encoder's pooled projection beside them; the UNet also takes the size
ids (original size, crop corner, target size), here the frame's own size, uncropped. Its VAE has its own latent
scaling (0.13025), so its latents are another space than SD1.5's. Frames are denoised as independent images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch

from evs_framework.conditioning import Conditioning
from evs_framework.hookspecs import hookimpl
from evs_framework.io.vae import FrameCodec, frame_vae_space
from evs_framework.loaders.checkpoints import check_diffusers_folder

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


@attrs.frozen
class SDXLParts:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: torch.nn.Module  # CLIPTextModel
    text_encoder_2: torch.nn.Module  # CLIPTextModelWithProjection
    tokenizer: object
    tokenizer_2: object


@attrs.frozen
class SDXLConditioning(Conditioning):
    embeds: torch.Tensor  # (prompts, tokens, dim of both encoders)
    pooled: torch.Tensor  # (prompts, projection dim)


class _TextEncoders(torch.nn.Module):
    """Both text encoders as one module, so that --offload moves them together."""

    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second


def read_sdxl_parts(path: Path, context) -> SDXLParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    check_diffusers_folder(path, REQUIRED_SUBFOLDERS, "SDXL", "download the diffusers layout (e.g. `evs fetch SDXL`)",
                           context.allow_pickle)
    options = {"local_files_only": True, "torch_dtype": context.dtype}
    parts = SDXLParts(
        UNet2DConditionModel.from_pretrained(path, subfolder="unet", **options),
        AutoencoderKL.from_pretrained(path, subfolder="vae", **{**options, "torch_dtype": context.vae_dtype}),
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **options),
        CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **options),
        CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
        CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True),
    )
    for module in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        module.to(context.placement.load_device).eval().requires_grad_(False)
    return parts


@attrs.frozen
class SDXLBackend:
    parts: SDXLParts
    codec: FrameCodec
    text_encoder: torch.nn.Module

    @property
    def unet(self):
        return self.parts.unet

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> SDXLConditioning:
        states = []
        for tokenizer, encoder in ((self.parts.tokenizer, self.parts.text_encoder),
                                   (self.parts.tokenizer_2, self.parts.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            output = encoder(ids.to(encoder.device), output_hidden_states=True)
            states.append(output.hidden_states[-2])
        return SDXLConditioning(torch.cat(states, dim=-1), output[0])

    @torch.no_grad()
    def predict(self, x, timestep, conditioning: SDXLConditioning):
        batch, frames, _, height, width = x.shape
        unet, factor = self.parts.unet, self.codec.space.spatial
        size = [height * factor, width * factor]
        time_ids = torch.tensor([size + [0, 0] + size], dtype=unet.dtype, device=x.device).expand(batch * frames, 6)
        eps = unet(x.flatten(0, 1).to(unet.dtype), timestep,
                   encoder_hidden_states=conditioning.embeds.repeat_interleave(frames, dim=0).to(unet.dtype),
                   added_cond_kwargs={"text_embeds": conditioning.pooled.repeat_interleave(frames, dim=0).to(unet.dtype),
                                      "time_ids": time_ids}).sample
        return eps.float().unflatten(0, (batch, frames))


def load_sdxl(entry, context) -> SDXLBackend:
    path = context.weights_path(entry)
    parts = context.shared(("sdxl", path.resolve()), lambda: read_sdxl_parts(path, context))
    codec = FrameCodec(parts.vae, frame_vae_space(entry.preset.latent_space.name, parts.vae))
    return SDXLBackend(parts, codec, _TextEncoders(parts.text_encoder, parts.text_encoder_2))


@hookimpl
def register_backends(register):
    register("sdxl", load_sdxl)
