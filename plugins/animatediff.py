"""Backend kind `animatediff`: an AnimateDiff motion adapter over an SD1.5 base.

The adapter is a diffusers folder or one weights file in the diffusers or the original (ComfyUI) key layout
(evs_framework.loaders.motion_adapter). The registry entry's `base` names the SD1.5 model whose spatial weights, text
encoder and VAE it uses. The motion UNet is assembled from the base UNet's own modules and the adapter's motion
modules, so no weight is copied: with lightningEP over EP next to an EP text-to-image model, EP's 860M spatial
parameters are in memory once. Option `spatial_lora` (AnimateLCM's) names a LoRA file beside the adapter that is
fused, at `spatial_lora_scale`, into a copy of the base instead. The whole clip is denoised at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import torch

from evs_framework.errors import WeightsError
from evs_framework.hookspecs import hookimpl
from evs_framework.loaders.motion_adapter import load_motion_adapter
from evs_framework.registry_checks import option_problems
from evs_plugins.sd15 import LORA_SCALES, OverSD15Parts, device_timestep, frame_codec, parts_with_lora

if TYPE_CHECKING:  # annotations only; diffusers is imported where a model loads
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel


@attrs.frozen
class AnimateDiffBackend(OverSD15Parts):
    """`parts` are the base's spatial modules, text encoder and VAE; `unet` runs them with the motion modules."""

    unet: UNetMotionModel

    @torch.no_grad()
    def predict(self, x, timestep, text):
        frames = x.shape[1]
        # UNetMotionModel takes (batch, channels, frames, h, w) and one text embedding per frame
        sample = x.permute(0, 2, 1, 3, 4).to(self.unet.dtype)
        text = text.repeat_interleave(frames, dim=0).to(self.unet.dtype)
        eps = self.unet(sample, device_timestep(timestep, x.device), encoder_hidden_states=text).sample
        return eps.float().permute(0, 2, 1, 3, 4)


SHARED_TOP_LEVEL = ("conv_in", "time_proj", "time_embedding", "conv_norm_out", "conv_act", "conv_out")
SHARED_IN_BLOCKS = ("resnets", "attentions", "downsamplers", "upsamplers")


def motion_unet_over(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """A UNetMotionModel whose spatial modules ARE `unet`'s and whose motion modules ARE `adapter`'s.

    `UNetMotionModel.from_unet2d` copies every spatial weight; here the model is laid out on the meta
    device (no memory) and its submodules are replaced by the existing ones.
    """
    from diffusers import UNetMotionModel  # imported late: diffusers takes seconds to import

    if adapter.config.get("conv_in_channels"):
        raise WeightsError("motion adapters with their own conv_in (PIA) are not supported; use a plain AnimateDiff adapter")
    with torch.device("meta"):
        model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    for name in SHARED_TOP_LEVEL:
        setattr(model, name, getattr(unet, name))
    pairs = [*zip(model.down_blocks, unet.down_blocks, adapter.down_blocks),
             *zip(model.up_blocks, unet.up_blocks, adapter.up_blocks), (model.mid_block, unet.mid_block, adapter.mid_block)]
    for motion_block, spatial_block, adapter_block in pairs:
        for name in SHARED_IN_BLOCKS:
            if getattr(motion_block, name, None) is not None:
                setattr(motion_block, name, getattr(spatial_block, name))
        if hasattr(motion_block, "motion_modules") and adapter_block is not None:
            motion_block.motion_modules = adapter_block.motion_modules
    unfilled = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if unfilled:
        raise WeightsError(f"the motion adapter does not fit the base UNet: {len(unfilled)} tensors have no weights, "
                           f"first {unfilled[:5]}; check that the adapter was made for SD1.5")
    return model


def load_animatediff(entry, context) -> AnimateDiffBackend:
    if entry.base is None:
        raise WeightsError(f"model {entry.name!r} has no `base` in the registry; name the SD1.5 model it runs over")
    path = context.weights_path(entry)
    base_entry = context.registry.get(entry.base)
    lora = entry.options.get("spatial_lora")
    if lora is None:
        parts = context.load(base_entry).parts  # the very modules a text-to-image role on the same base uses
    else:
        lora_path = (path if path.is_dir() else path.parent) / lora
        parts = parts_with_lora(base_entry, lora_path, float(entry.options.get("spatial_lora_scale", 1.0)), context)
    adapter = load_motion_adapter(path, context.dtype, allow_pickle=context.allow_pickle)
    adapter.to(context.placement.load_device).eval().requires_grad_(False)
    return AnimateDiffBackend(parts, frame_codec(entry, parts), motion_unet_over(parts.unet, adapter))


@attrs.frozen
class AnimateDiffOptions:
    spatial_lora: str | None = None  # a file beside the adapter
    spatial_lora_scale: float = 1.0


@hookimpl
def entry_problems(entry, names):
    if entry.kind != "animatediff":
        return None
    problems = option_problems(entry.options, AnimateDiffOptions, {"spatial_lora_scale": LORA_SCALES})
    return problems + ([] if entry.base else ["base: required; name the SD1.5 model whose spatial weights it runs over"])


@hookimpl
def required_models(entry, context):
    if entry.kind != "animatediff":
        return None
    return [context.registry.get(entry.base)] if entry.base in context.registry.entries else []


@hookimpl
def register_backends(register):
    register("animatediff", load_animatediff)
