"""Low-rank adapters trained in place on a UNet, and written in the diffusers LoRA file format that
evs_framework.loaders.lora reads and fuses.

Each adapted layer's weight becomes W + up @ down (a weight parametrization), so the UNet's own code runs unchanged
and a motion UNet assembled over it (motion_unet_over shares its modules) sees the adapted weights too. `up` starts
at zero: an untrained adapter leaves the UNet as it was.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.nn.utils import parametrize

# layer names' endings that get an adapter: attention and feed-forward projections and the resnets' convolutions
SPATIAL_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                   "conv1", "conv2")


class LowRankDelta(torch.nn.Module):
    """The parametrization W -> W + up @ down of one Linear or Conv2d weight (a conv's down spans its kernel)."""

    def __init__(self, weight: torch.Tensor, rank: int):
        super().__init__()
        fan_in = weight[0].numel()
        self.shape = tuple(weight.shape)
        self.down = torch.nn.Parameter(torch.randn(rank, fan_in, device=weight.device) / math.sqrt(fan_in))
        self.up = torch.nn.Parameter(torch.zeros(weight.shape[0], rank, device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.up @ self.down).view(self.shape).to(weight.dtype)


def add_lora(unet: torch.nn.Module, rank: int, targets: tuple[str, ...] = SPATIAL_TARGETS) -> torch.nn.ModuleDict:
    """Adapters of `rank` on every Linear and Conv2d of `unet` whose name ends in one of `targets`, the UNet's own
    weights frozen; returns them by layer name (dots written as '/', which module names cannot hold)."""
    unet.requires_grad_(False)
    deltas = {}
    for name, module in list(unet.named_modules()):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(targets):
            delta = LowRankDelta(module.weight, rank)
            parametrize.register_parametrization(module, "weight", delta)
            deltas[name.replace(".", "/")] = delta
    if not deltas:
        raise ValueError(f"no layer of the UNet ends in any of {targets}")
    return torch.nn.ModuleDict(deltas)


def save_lora(deltas: torch.nn.ModuleDict, file: Path, dtype: torch.dtype = torch.float16) -> Path:
    """The adapters as a diffusers LoRA file (`unet.<layer>.lora_A.weight` / `.lora_B.weight`, alpha = rank), written
    beside its place and moved in when complete."""
    tensors = {}
    for key, delta in deltas.items():
        layer = key.replace("/", ".")
        rank, kernel = delta.down.shape[0], delta.shape[2:]
        down = delta.down.detach().reshape(rank, *delta.shape[1:])
        up = delta.up.detach().reshape(delta.shape[0], rank, *(1,) * len(kernel))
        tensors[f"unet.{layer}.lora_A.weight"] = down.to("cpu", dtype).contiguous()
        tensors[f"unet.{layer}.lora_B.weight"] = up.to("cpu", dtype).contiguous()
    file = Path(file)
    partial = file.with_name(f".{file.name}.partial")
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, file)
    return file
