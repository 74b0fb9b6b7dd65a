"""Capturing and injecting the features of spatial self-attention layers, for evs_plugins.feature_injection.

`install` swaps an `InjectionProcessor` into each chosen diffusers `Attention` module and remembers the processor it
replaced; `uninstall` puts the originals back, so the models are exactly as they were. A processor does nothing of
its own while its `Injector` is idle: it hands the call to the original processor.
"""

from __future__ import annotations

import fnmatch
import math
from typing import TYPE_CHECKING

import attrs
import torch
import torch.nn.functional as F

from evs_framework.errors import EVSError

if TYPE_CHECKING:  # annotations only; diffusers is imported where a model loads
    from diffusers.models.attention_processor import Attention

GIB = 2**30


def self_attention_layers(model: torch.nn.Module, patterns) -> dict[str, Attention]:
    """Spatial self-attention modules (`...attn1`, outside motion modules) whose names match any fnmatch pattern."""
    from diffusers.models.attention_processor import Attention  # imported late: diffusers takes seconds to import

    return {name: module for name, module in model.named_modules()
            if isinstance(module, Attention) and name.endswith(".attn1") and "motion_modules" not in name
            and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}


@attrs.define
class FeatureCache:
    """Features by noise level and layer; refuses to grow past `limit_bytes`."""

    device: torch.device | None  # None: keep each tensor where it was computed
    limit_bytes: int
    levels: dict[float, dict[str, tuple[torch.Tensor, ...]]] = attrs.Factory(dict)
    bytes: int = 0

    def put(self, level: float, layer: str, tensors: tuple[torch.Tensor, ...]) -> None:
        stored = tuple(t.detach().to(self.device) if self.device is not None else t.detach() for t in tensors)
        size = sum(t.numel() * t.element_size() for t in stored)
        if self.bytes + size > self.limit_bytes:
            raise EVSError(f"the feature cache of Selective Feature Injection would pass its limit of "
                           f"{self.limit_bytes / GIB:.2f} GiB (injection.max_cache_gib) at layer {layer}; choose fewer "
                           f"layers (injection.layers) or steps (injection.window), or raise the limit (with "
                           f"injection.cache_device: cpu the cache lives in host memory)")
        self.levels.setdefault(level, {})[layer] = stored
        self.bytes += size

    def get(self, level: float, layer: str, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The tensors stored for `layer` at `level`, repeated along the batch to `batch` (guidance doubles it)."""
        stored = self.levels[level][layer]
        cached = stored[0].shape[0]
        if batch % cached:
            raise EVSError(f"cached features of {layer} hold a batch of {cached}, which does not divide the batch of "
                           f"{batch} they are injected into; use the same guidance for inversion and denoising")
        return tuple(t.to(device).repeat(batch // cached, *([1] * (t.dim() - 1))) for t in stored)


@attrs.define
class Injector:
    """What the processors do now: `mode` None (pass through), "record" or "inject", at noise level `level`."""

    features: str  # "kv" or "attention_maps"
    cache: FeatureCache
    mode: str | None = None
    level: float | None = None
    installed: list = attrs.Factory(list)  # (module, the processor it had)

    def install(self, layers: dict[str, Attention]) -> None:
        for name, module in layers.items():
            if any(module is done for done, _ in self.installed):
                continue  # a module shared by two models gets one processor
            self.installed.append((module, module.processor))
            module.set_processor(InjectionProcessor(self, name, module.processor))

    def uninstall(self) -> None:
        for module, original in reversed(self.installed):
            module.set_processor(original)
        self.installed.clear()


class InjectionProcessor:
    """Self-attention that records or replaces its keys and values (or attention maps) when its injector says so."""

    def __init__(self, injector: Injector, layer: str, original):
        self.injector, self.layer, self.original = injector, layer, original

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs) -> torch.Tensor:
        injector = self.injector
        plain = (encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3
                 or attn.group_norm is not None or attn.spatial_norm is not None)
        wanted = injector.mode == "record" or (
            injector.mode == "inject" and self.layer in injector.cache.levels.get(injector.level, {}))
        if plain or not wanted:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        attend = self.attend_kv if injector.features == "kv" else self.attend_maps
        output = attn.to_out[1](attn.to_out[0](attend(attn, hidden_states)))
        if attn.residual_connection:
            output = output + hidden_states
        return output / attn.rescale_output_factor

    def attend_kv(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        injector = self.injector
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if injector.mode == "record":
            injector.cache.put(injector.level, self.layer, (key, value))
        else:
            key, value = injector.cache.get(injector.level, self.layer, query.shape[0], query.device)
        batch, heads = query.shape[0], attn.heads
        split = [t.reshape(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (query, key, value)]
        output = F.scaled_dot_product_attention(*split, dropout_p=0.0, is_causal=False)
        return output.transpose(1, 2).reshape(batch, -1, split[0].shape[-1] * heads).to(query.dtype)

    def attend_maps(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        injector = self.injector
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(hidden_states))
        if injector.mode == "record":
            maps = attn.get_attention_scores(query, attn.head_to_batch_dim(attn.to_k(hidden_states)), None)
            injector.cache.put(injector.level, self.layer, (maps,))
        else:
            (maps,) = injector.cache.get(injector.level, self.layer, query.shape[0], query.device)
        return attn.batch_to_head_dim(torch.bmm(maps.to(value.dtype), value))


def nearest_level(sigma: float, levels) -> float:
    """The level closest to `sigma` in log-sigma (levels are all positive)."""
    return min(levels, key=lambda level: abs(math.log(level) - math.log(sigma)))
