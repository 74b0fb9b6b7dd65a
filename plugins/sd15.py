"""Backend kinds `sd15` and `sd15_lora`: SD1.5-family text-to-image models.

`sd15` reads a diffusers folder (unet/, vae/, text_encoder/, tokenizer/) or one civitai-style checkpoint in the
original layout (a file, or a folder holding exactly one); a checkpoint takes its configs and tokenizer from the
diffusers folder of the registry entry named by option `config_from` (default `SD`), so nothing is downloaded.
`sd15_lora` is its `base` entry with a LoRA file fused in at option `scale`, in a copy of its own, so the base
as other entries use it (a motion model's spatial weights, say) stays free of the LoRA.

The frames of a clip are denoised as a batch of independent images.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

import attrs
import torch

from evs_framework.errors import WeightsError
from evs_framework.hookspecs import hookimpl
from evs_framework.io.vae import FrameCodec, frame_vae_space
from evs_framework.loaders.checkpoints import CHECKPOINT_SUFFIXES, check_diffusers_folder
from evs_framework.loaders.lora import fuse_lora, read_lora
from evs_framework.loaders.single_file import load_sd15_single_file
from evs_framework.registry_checks import option_problems

if TYPE_CHECKING:  # annotations only; the modules are imported where a model loads
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer")
DEFAULT_CONFIG_ENTRY = "SD"
LORA_SCALES = (-100.0, 100.0)  # far beyond any useful strength; the fused weights stay finite


@attrs.frozen
class SD15Options:
    config_from: str = DEFAULT_CONFIG_ENTRY


@attrs.frozen
class LoraOptions:
    scale: float = 1.0


@attrs.frozen
class SD15Parts:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def weights_file(path: Path, what: str) -> Path:
    """`path` itself when it is a file, else the one checkpoint file in the folder `path`."""
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    if not found:
        raise WeightsError(f"{path} holds no {what} (.safetensors); put the downloaded file there")
    raise WeightsError(f"{path} holds {len(found)} candidate {what} files ({', '.join(p.name for p in found)}); "
                       f"keep one there, or point the registry entry's `local` at the file")


def read_sd15_parts(path: Path, entry, context) -> SD15Parts:
    """Fresh components from a diffusers folder or a single checkpoint (not shared with anything)."""
    if path.is_dir() and (path / "unet").is_dir():
        # diffusers and transformers take seconds to import: only commands that load a model pay for them
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        check_diffusers_folder(path, REQUIRED_SUBFOLDERS, "SD1.5",
                               "point the registry entry at a folder saved with save_pretrained", context.allow_pickle)
        options = {"local_files_only": True, "torch_dtype": context.dtype, "use_safetensors": not context.allow_pickle or None}
        parts = SD15Parts(
            UNet2DConditionModel.from_pretrained(path, subfolder="unet", **options),
            AutoencoderKL.from_pretrained(path, subfolder="vae", **{**options, "torch_dtype": context.vae_dtype}),
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **options),
            CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
        )
    else:
        checkpoint = weights_file(path, f"SD1.5 checkpoint for model {entry.name!r}")
        loaded = load_sd15_single_file(checkpoint, config_folder(entry, context), context.dtype,
                                       vae_dtype=context.vae_dtype, allow_pickle=context.allow_pickle)
        parts = SD15Parts(loaded["unet"], loaded["vae"], loaded["text_encoder"], loaded["tokenizer"])
    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.to(context.placement.load_device).eval().requires_grad_(False)
    return parts


def config_folder(entry, context) -> Path:
    """The SD1.5 diffusers folder whose configs and tokenizer a single checkpoint is read with."""
    name = entry.options.get("config_from", DEFAULT_CONFIG_ENTRY)
    config_entry = context.registry.get(name)
    try:
        return context.weights_path(config_entry)
    except WeightsError as exc:
        raise WeightsError(f"model {entry.name!r} is a single checkpoint file, which is read with the configs and tokenizer "
                           f"of the SD1.5 diffusers folder of registry entry {name!r} (option `config_from`); {exc}") from None


def unet_config_folder(entry, context) -> Path:
    """The diffusers folder whose unet/config.json describes the entry's UNet (read without loading weights)."""
    if entry.kind == "sd15_lora":
        return unet_config_folder(context.registry.get(entry.base), context)
    path = context.weights_path(entry)
    if path.is_dir() and (path / "unet").is_dir():
        return path
    return config_folder(entry, context)


def sd15_parts(entry, context) -> SD15Parts:
    """The entry's components, loaded once per run and per weights path."""
    path = context.weights_path(entry)
    return context.shared(("sd15", path.resolve()), lambda: read_sd15_parts(path, entry, context))


def parts_with_lora(base_entry, lora_path: Path, scale: float, context) -> SD15Parts:
    """A copy of `base_entry`'s components with the LoRA at `lora_path` fused in at `scale`, loaded once per run."""
    if base_entry.kind != "sd15":
        raise WeightsError(f"a LoRA needs an sd15 base, but {base_entry.name!r} is of kind {base_entry.kind!r}; "
                           f"set `base` to an SD1.5 model")
    base_path = context.weights_path(base_entry)
    lora_file = weights_file(lora_path, "LoRA file")

    def build() -> SD15Parts:
        parts = read_sd15_parts(base_path, base_entry, context)
        lora = read_lora(lora_file, parts.unet, parts.text_encoder)
        fuse_lora(lora, parts.unet, parts.text_encoder, scale)
        return parts

    return context.shared(("sd15_lora", base_path.resolve(), lora_file.resolve(), scale), build)


def device_timestep(timestep: float, device: torch.device) -> torch.Tensor:
    """The timestep as a 0-d tensor made on the model's device. Given a Python number, diffusers copies it to the GPU
    at every call, and that copy waits for all queued GPU work, so the host could never run ahead of the GPU."""
    return torch.full((), timestep, dtype=torch.float32, device=device)


@torch.no_grad()
def encode_prompts(parts: SD15Parts, prompts: list[str]) -> torch.Tensor:
    ids = parts.tokenizer(prompts, padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    return parts.text_encoder(ids.to(parts.text_encoder.device))[0]


def frame_codec(entry, parts: SD15Parts) -> FrameCodec:
    """The parts' VAE as the codec of the latent space the entry's preset declares."""
    return FrameCodec(parts.vae, frame_vae_space(entry.preset.latent_space.name, parts.vae))


@attrs.frozen
class OverSD15Parts:
    """What backends over SD1.5 parts share: the parts' text encoder reads the prompts, their VAE is the codec."""

    parts: SD15Parts
    codec: FrameCodec

    @property
    def text_encoder(self):
        return self.parts.text_encoder

    @property
    def vae(self):
        return self.parts.vae

    def encode_prompts(self, prompts):
        return encode_prompts(self.parts, prompts)


@attrs.frozen
class SD15Backend(OverSD15Parts):
    @property
    def unet(self):
        return self.parts.unet

    @torch.no_grad()
    def predict(self, x, timestep, text):
        """Noise for x (batch, frames, channels, h, w), each frame an image, with text (batch, tokens, dim)."""
        batch, frames = x.shape[:2]
        unet = self.parts.unet
        eps = unet(x.flatten(0, 1).to(unet.dtype), device_timestep(timestep, x.device),
                   encoder_hidden_states=text.repeat_interleave(frames, dim=0).to(unet.dtype)).sample
        return eps.float().unflatten(0, (batch, frames))


def load_sd15(entry, context) -> SD15Backend:
    parts = sd15_parts(entry, context)
    return SD15Backend(parts, frame_codec(entry, parts))


def load_sd15_lora(entry, context) -> SD15Backend:
    if entry.base is None:
        raise WeightsError(f"LoRA model {entry.name!r} has no `base` in the registry; name the SD1.5 model it applies to")
    scale = float(entry.options.get("scale", 1.0))
    parts = parts_with_lora(context.registry.get(entry.base), context.weights_path(entry), scale, context)
    return SD15Backend(parts, frame_codec(entry, parts))


@hookimpl
def required_models(entry, context):
    if entry.kind == "sd15_lora":
        return [context.registry.get(entry.base)] if entry.base in context.registry.entries else []
    if entry.kind != "sd15":
        return None
    try:
        path = context.weights_path(entry)
    except WeightsError:
        path = None  # until its files are there, they are taken for a single checkpoint, so both show in one round
    if path is not None and path.is_dir() and (path / "unet").is_dir():
        return []
    name = entry.options.get("config_from", DEFAULT_CONFIG_ENTRY)
    return [context.registry.get(name)] if name in context.registry.entries else []


@hookimpl
def entry_problems(entry, names):
    if entry.kind == "sd15":
        problems = option_problems(entry.options, SD15Options)
        config = entry.options.get("config_from", DEFAULT_CONFIG_ENTRY)
        if not problems and config not in names:
            problems.append(f"options.config_from: no model {config!r} in the registry; name the SD1.5 diffusers "
                            f"model whose configs a single checkpoint is read with")
        return problems
    if entry.kind == "sd15_lora":
        problems = option_problems(entry.options, LoraOptions, {"scale": LORA_SCALES})
        return problems + ([] if entry.base else ["base: required; name the SD1.5 model the LoRA is fused into"])
    return None


@hookimpl
def register_backends(register):
    register("sd15", load_sd15)
    register("sd15_lora", load_sd15_lora)
