"""Backend kind `animatediff`: an AnimateDiff motion adapter (diffusers folder) over an SD1.5 base.

The registry entry's `base` names the SD1.5 model whose spatial weights, text encoder and VAE it uses.
The whole clip is denoised at once.
"""

from __future__ import annotations

import attrs
import torch
from diffusers import MotionAdapter, UNetMotionModel

from evs_framework.errors import WeightsError
from evs_framework.hookspecs import hookimpl
from evs_plugins.sd15 import SD15Parts, encode_prompts, load_sd15_parts


@attrs.frozen
class AnimateDiffBackend:
    unet: UNetMotionModel
    base: SD15Parts
    frames_as_batch = False

    @property
    def vae(self):
        return self.base.vae

    def encode_prompts(self, prompts):
        return encode_prompts(self.base, prompts)

    @torch.no_grad()
    def predict_noise(self, x, timestep, text):
        frames = x.shape[1]
        # UNetMotionModel takes (batch, channels, frames, h, w) and one text embedding per frame
        sample = x.permute(0, 2, 1, 3, 4).to(self.unet.dtype)
        text = text.repeat_interleave(frames, dim=0).to(self.unet.dtype)
        eps = self.unet(sample, timestep, encoder_hidden_states=text).sample
        return eps.float().permute(0, 2, 1, 3, 4)


def load_animatediff(entry, context) -> AnimateDiffBackend:
    if entry.base is None:
        raise WeightsError(f"model {entry.name!r} has no `base` in the registry; name the SD1.5 model it runs over")
    base = load_sd15_parts(context.weights_path(context.registry.get(entry.base)), context)
    folder = context.weights_path(entry)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder} is not a diffusers MotionAdapter folder (no config.json); "
                           f"point the registry entry at a folder saved with MotionAdapter.save_pretrained")
    adapter = MotionAdapter.from_pretrained(folder, local_files_only=True, torch_dtype=context.dtype)
    unet = UNetMotionModel.from_unet2d(base.unet, adapter)
    unet.to(device=context.device, dtype=context.dtype).eval().requires_grad_(False)
    return AnimateDiffBackend(unet, base)


@hookimpl
def register_backends(register):
    register("animatediff", load_animatediff)
