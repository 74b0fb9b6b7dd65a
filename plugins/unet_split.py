"""A diffusers UNet (UNet2DConditionModel, or AnimateDiff's UNetMotionModel) run whole, or only in its outer blocks.

The outer `depth` down-blocks reach the outer `depth` up-blocks through skip connections; everything deeper (the
inner down-blocks, the mid-block, the inner up-blocks) reaches them as one tensor, the hidden state entering
up_blocks[-depth]: the deep features. `full_pass` is the UNet's own forward, which can keep the deep features on
the way; `shallow_pass` runs the time embedding, conv_in, the outer down-blocks, the outer up-blocks on deep features
given to it, and conv_out. Given the deep features of the same input, the shallow pass computes what the full pass
does (tests/test_step_cache.py holds it to that). Only the modules' public structure is used; diffusers is imported
where a pass runs.
"""

from __future__ import annotations

from typing import Callable

import torch

SPLIT_CLASSES = ("UNet2DConditionModel", "UNetMotionModel")
# conditioning the shallow pass does not compute (SD1.5 and AnimateDiff use none of it)
UNSPLIT_CONFIG = ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim",
                  "center_input_sample")


def split_problem(class_name: str, config, depth: int) -> str | None:
    """Why a UNet of this class and config cannot run shallow passes `depth` blocks deep; None when it can."""
    if class_name not in SPLIT_CLASSES:
        return f"its network is a {class_name}, not a diffusers UNet with down- and up-blocks ({', '.join(SPLIT_CLASSES)})"
    extras = [name for name in UNSPLIT_CONFIG if config.get(name)]
    if extras:
        return f"its UNet uses {', '.join(extras)}, which the shallow pass does not compute"
    blocks = len(config["up_block_types"])
    if depth > blocks:
        return f"depth {depth} is beyond its UNet's {blocks} up-blocks; give 1 to {blocks}"
    return None


def full_pass(forward: Callable, unet: torch.nn.Module, depth: int, keep: bool, *args, **kwargs):
    """`forward(*args, **kwargs)`, the UNet's own forward: (its output, the deep features when `keep`, else None)."""
    if not keep:
        return forward(*args, **kwargs), None
    kept = []
    handle = unet.up_blocks[-depth].register_forward_pre_hook(
        lambda module, args, kwargs: kept.append(kwargs["hidden_states"]), with_kwargs=True)
    try:
        output = forward(*args, **kwargs)
    finally:
        handle.remove()
    return output, kept[0]


def shallow_pass(unet: torch.nn.Module, depth: int, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                 deep: torch.Tensor):
    """The UNet's output for these inputs with its deep path replaced by `deep` (in the UNet's output type)."""
    motion = type(unet).__name__ == "UNetMotionModel"
    frames = sample.shape[2] if motion else None
    if motion:  # (batch, channels, frames, h, w) -> a batch of frames, as UNetMotionModel.forward does
        t = torch.as_tensor(timestep, device=sample.device)
        t = (t[None] if t.dim() == 0 else t).expand(sample.shape[0])
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype), None)
        emb = emb.repeat_interleave(frames, dim=0, output_size=emb.shape[0] * frames)
        hidden = sample.permute(0, 2, 1, 3, 4).reshape((sample.shape[0] * frames, -1) + sample.shape[3:])
    else:
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        hidden = sample
    per_frame = {"num_frames": frames} if motion else {}

    def text(block) -> dict:
        return {"encoder_hidden_states": encoder_hidden_states} if getattr(block, "has_cross_attention", False) else {}

    hidden = unet.conv_in(hidden)
    skips = (hidden,)
    for block in unet.down_blocks[:depth]:
        hidden, more = block(hidden_states=hidden, temb=emb, **text(block), **per_frame)
        skips += more
    up_blocks = unet.up_blocks[len(unet.up_blocks) - depth:]
    # the outer up-blocks take the first skips; the rest (the last down-block's downsampled output) feeds the deep path
    skips = skips[:sum(len(block.resnets) for block in up_blocks)]
    sized = any(side % 2**unet.num_upsamplers for side in sample.shape[-2:])  # the forward's forward_upsample_size
    hidden, upsample_size = deep, None
    for block in up_blocks:
        used, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        if sized and skips:
            upsample_size = skips[-1].shape[2:]
        hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=used, upsample_size=upsample_size,
                       **text(block), **per_frame)
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    hidden = unet.conv_out(hidden)
    if motion:
        from diffusers.models.unets.unet_motion_model import UNetMotionOutput

        return UNetMotionOutput(hidden[None, :].reshape((-1, frames) + hidden.shape[1:]).permute(0, 2, 1, 3, 4))
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    return UNet2DConditionOutput(hidden)
