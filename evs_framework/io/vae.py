"""Frames <-> latents with a frame-wise VAE (diffusers AutoencoderKL), a chunk of frames at a time to bound memory."""

from __future__ import annotations

import attrs
import torch

from evs_framework.latent_space import LatentSpace


def frame_vae_space(name: str, vae) -> LatentSpace:
    """The latent space of an AutoencoderKL, under the name its registry preset declares."""
    config = vae.config
    return LatentSpace(name, config.latent_channels, 2 ** (len(config.block_out_channels) - 1), 1,
                       config.scaling_factor, config.get("shift_factor") or 0.0)


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, chunk: int) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, C, H/8, W/8) latents, shifted and scaled by the VAE's config (distribution
    mode)."""
    param = next(vae.parameters())
    latents = [vae.encode(part.to(param.device, param.dtype)).latent_dist.mode() for part in frames.split(chunk)]
    shift = vae.config.get("shift_factor") or 0.0
    return (torch.cat(latents).float() - shift) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inverse of encode_frames; returns float32 frames on the CPU, clamped to [-1, 1]."""
    param = next(vae.parameters())
    scaled = latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
    frames = [vae.decode(part.to(param.device, param.dtype)).sample.float().cpu() for part in scaled.split(chunk)]
    return torch.cat(frames).clamp(-1, 1)


@attrs.frozen
class FrameCodec:
    """A backend's codec for a frame-wise VAE: `encode(frames, chunk)`, `decode(latents, chunk)`, its `space`, and
    `module`, the weights --offload moves."""

    module: torch.nn.Module
    space: LatentSpace

    def encode(self, frames: torch.Tensor, chunk: int) -> torch.Tensor:
        return encode_frames(self.module, frames, chunk)

    def decode(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        return decode_latents(self.module, latents, chunk)
