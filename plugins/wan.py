"""Backend kind `wan`: Wan 2.x text-to-video, a diffusion transformer over a 3D causal VAE, trained by flow matching.

It reads the diffusers folder as downloaded (Wan-AI/Wan2.1-T2V-1.3B-Diffusers): transformer/, vae/,
text_encoder/ (UMT5) and tokenizer/. The VAE compresses 1 + 4k frames into 1 + k latent frames of 16 channels,
normalised per channel by its config's latents_mean and latents_std, as Wan's pipelines do; the whole clip is
encoded and decoded at once. Prompts are read as the pipeline reads them: the encoder's states up to the prompt's
length, zeros after, `max_sequence_length` tokens in all (option, default 512).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch

from evs_framework.hookspecs import hookimpl
from evs_framework.io.vae import finite_or_float32
from evs_framework.latent_space import LatentSpace
from evs_framework.loaders.checkpoints import check_diffusers_folder
from evs_framework.registry_checks import option_problems

if TYPE_CHECKING:  # annotations only; the modules are imported where a model loads
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

REQUIRED_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")
DEFAULT_MAX_SEQUENCE_LENGTH = 512
MAX_SEQUENCE_LENGTH = 4096  # the tokenizer pads every prompt to the length asked: beyond this, only memory goes


@attrs.frozen
class WanParts:
    transformer: WanTransformer3DModel
    vae: AutoencoderKLWan
    text_encoder: torch.nn.Module
    tokenizer: object


def read_wan_parts(path: Path, context) -> WanParts:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    check_diffusers_folder(path, REQUIRED_SUBFOLDERS, "Wan", "download the whole repo (e.g. `evs fetch wan2.1-1.3B`)",
                           context.allow_pickle)
    options = {"local_files_only": True, "torch_dtype": context.dtype}
    parts = WanParts(
        WanTransformer3DModel.from_pretrained(path, subfolder="transformer", **options),
        AutoencoderKLWan.from_pretrained(path, subfolder="vae", **{**options, "torch_dtype": context.vae_dtype}),
        UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", **options),
        AutoTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
    )
    for module in (parts.transformer, parts.vae, parts.text_encoder):
        module.to(context.placement.load_device).eval().requires_grad_(False)
    return parts


def wan_space(name: str, vae) -> LatentSpace:
    config = vae.config
    return LatentSpace(name, config.z_dim, config.scale_factor_spatial, config.scale_factor_temporal,
                       tuple(1.0 / s for s in config.latents_std), tuple(config.latents_mean))


@attrs.frozen
class VideoVAECodec:
    """A 3D VAE's codec: frames (F, 3, H, W) <-> latents (1 + (F - 1) / temporal, C, h, w), normalised per channel.
    `chunk` is not used: the VAE goes through the clip causally, a few frames at a time, on its own."""

    module: torch.nn.Module
    space: LatentSpace

    def _normalisation(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.space.shift, dtype=torch.float32, device=device).view(shape)
        scale = torch.tensor(self.space.scaling, dtype=torch.float32, device=device).view(shape)
        return mean, scale

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, chunk: int) -> torch.Tensor:
        video = frames.permute(1, 0, 2, 3)[None]
        latents = finite_or_float32(self.module, lambda x: self.module.encode(x).latent_dist.mode().float(), video)
        mean, scale = self._normalisation(latents.device)
        return ((latents - mean) * scale)[0].permute(1, 0, 2, 3)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        mean, scale = self._normalisation(latents.device)
        z = latents.permute(1, 0, 2, 3)[None].float() / scale + mean
        video = finite_or_float32(self.module, lambda x: self.module.decode(x).sample.float(), z).cpu()
        return video[0].permute(1, 0, 2, 3).clamp(-1, 1)


@attrs.frozen
class WanBackend:
    parts: WanParts
    codec: VideoVAECodec
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH

    @property
    def unet(self):
        return self.parts.transformer  # the denoising network, whatever its architecture (--offload moves it)

    @property
    def text_encoder(self):
        return self.parts.text_encoder

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), max_sequence_length, dim): each prompt's states, zeros after its last token."""
        encoder, length = self.parts.text_encoder, self.max_sequence_length
        tokens = self.parts.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                                      add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = tokens.attention_mask.to(encoder.device)
        states = encoder(tokens.input_ids.to(encoder.device), mask).last_hidden_state
        return states * mask[..., None].to(states.dtype)

    @torch.no_grad()
    def predict(self, x, timestep, text):
        """Flow velocity for x (batch, latent frames, channels, h, w); the transformer takes (batch, channels, frames,
        h, w) and one timestep per sample."""
        transformer = self.parts.transformer
        sample = x.permute(0, 2, 1, 3, 4).to(transformer.dtype)
        t = torch.full((x.shape[0],), float(timestep), device=x.device)
        velocity = transformer(hidden_states=sample, timestep=t, encoder_hidden_states=text.to(transformer.dtype)).sample
        return velocity.float().permute(0, 2, 1, 3, 4)


def load_wan(entry, context) -> WanBackend:
    path = context.weights_path(entry)
    parts = context.shared(("wan", path.resolve()), lambda: read_wan_parts(path, context))
    length = int(entry.options.get("max_sequence_length", DEFAULT_MAX_SEQUENCE_LENGTH))
    return WanBackend(parts, VideoVAECodec(parts.vae, wan_space(entry.preset.latent_space.name, parts.vae)), length)


@attrs.frozen
class WanOptions:
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH


@hookimpl
def entry_problems(entry, names):
    if entry.kind != "wan":
        return None
    return option_problems(entry.options, WanOptions, {"max_sequence_length": (1, MAX_SEQUENCE_LENGTH)})


@hookimpl
def register_backends(register):
    register("wan", load_wan)
