"""Frames <-> latents with a diffusers AutoencoderKL, a chunk of frames at a time to bound memory."""

from __future__ import annotations

import torch


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, chunk: int) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, 4, H/8, W/8) latents scaled by the VAE's scaling factor (distribution mode)."""
    param = next(vae.parameters())
    latents = [vae.encode(part.to(param.device, param.dtype)).latent_dist.mode() for part in frames.split(chunk)]
    return torch.cat(latents).float() * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inverse of encode_frames; returns float32 frames on the CPU, clamped to [-1, 1]."""
    param = next(vae.parameters())
    scaled = latents / vae.config.scaling_factor
    frames = [vae.decode(part.to(param.device, param.dtype)).sample.float().cpu() for part in scaled.split(chunk)]
    return torch.cat(frames).clamp(-1, 1)
