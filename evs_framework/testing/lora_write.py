"""Writes random-weight LoRA .safetensors files in the real on-disk formats (kohya/civitai and diffusers), for tests
and the tiny demo model zoo. evs_framework.loaders.lora reads them back.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

from evs_framework.loaders.lora import LDM_TOP_LEVEL, _ldm_blocks

# module-name endings that get a LoRA: UNet attention projections and transformer in/out, CLIP attention and MLP
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                   "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
LDM_TOP_LEVEL_OF = {diffusers: ldm for ldm, diffusers in LDM_TOP_LEVEL.items()}  # time_embedding_linear_1 -> ...


def write_kohya_lora(file, unet, text_encoder=None, *, rank=4, alpha=2.0, seed=0, names="ldm",
                     targets=DEFAULT_TARGETS) -> Path:
    """A kohya/civitai file: `lora_unet_<layer>` / `lora_te_<layer>` keys with .lora_down.weight, .lora_up.weight
    and .alpha; UNet layers named LDM-style (`input_blocks_1_1_...`, names="ldm") or diffusers-style
    (`down_blocks_0_attentions_0_...`, names="diffusers"), underscore-joined."""
    if names not in ("ldm", "diffusers"):
        raise ValueError(f"names must be 'ldm' or 'diffusers', not {names!r}")
    ldm_names = _diffusers_to_ldm(unet) if names == "ldm" else None
    tensors = {}
    for target, module, down, up in _random_layers(unet, text_encoder, rank, seed, targets):
        if target == "text_encoder":
            layer = "lora_te_" + _with_text_model(module).replace(".", "_")
        else:
            layer = "lora_unet_" + (_ldm_name(module, ldm_names) if ldm_names else module.replace(".", "_"))
        tensors |= {f"{layer}.lora_down.weight": down, f"{layer}.lora_up.weight": up,
                    f"{layer}.alpha": torch.tensor(float(alpha))}
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}
    return _save_atomically(tensors, Path(file), metadata)


def write_diffusers_lora(file, unet, text_encoder=None, *, rank=4, alpha=None, seed=0,
                         targets=DEFAULT_TARGETS) -> Path:
    """A diffusers `save_lora_weights` file: `unet.<module>.lora_A.weight` / `.lora_B.weight` (and `text_encoder.`)
    keys; alpha, when given, goes in the `lora_adapter_metadata` JSON (`unet.lora_alpha`, `unet.r`, ...), else
    readers take alpha = rank."""
    tensors = {}
    for target, module, down, up in _random_layers(unet, text_encoder, rank, seed, targets):
        layer = f"{target}.{_with_text_model(module) if target == 'text_encoder' else module}"
        tensors |= {f"{layer}.lora_A.weight": down, f"{layer}.lora_B.weight": up}
    metadata = {"format": "pt"}
    if alpha is not None:
        prefixes = ("unet", "text_encoder") if text_encoder is not None else ("unet",)
        config = {f"{target}.{field}": value for target in prefixes
                  for field, value in (("lora_alpha", alpha), ("r", rank))}
        metadata["lora_adapter_metadata"] = json.dumps(config, indent=2, sort_keys=True)
    return _save_atomically(tensors, Path(file), metadata)


def _random_layers(unet, text_encoder, rank, seed, targets):
    """(target, module name, down, up) for each targeted Linear/Conv2d, in module order, so one seed gives the same
    tensors whatever naming a writer uses."""
    generator = torch.Generator().manual_seed(seed)
    for target, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is None:
            continue
        for name, module in model.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if not any(name == t or name.endswith(f".{t}") for t in targets):
                continue
            out_features, in_features, *kernel = module.weight.shape
            one_by_one = [1] * len(kernel)
            down = 0.1 * torch.randn(rank, in_features, *kernel, generator=generator)
            # up is non-zero (training starts it at zero) so that fusing changes the model
            up = 0.1 * torch.randn(out_features, rank, *one_by_one, generator=generator)
            yield target, name, down, up


def _with_text_model(module: str) -> str:
    """LoRA files name CLIP layers `text_model.encoder...` even where transformers 5 dropped that level."""
    return module if module.startswith("text_model.") else f"text_model.{module}"


def _diffusers_to_ldm(unet) -> dict[str, tuple[str, dict | None]]:
    """Diffusers module path -> (LDM block name, sub-layer renames diffusers -> LDM), inverted from lora.py's table."""
    table = {}
    for ldm_block, (path, renames) in _ldm_blocks(unet).items():
        table[path] = (ldm_block, None if renames is None else {new: old for old, new in renames.items()})
    return table


def _ldm_name(module: str, ldm_names) -> str:
    if module.replace(".", "_") in LDM_TOP_LEVEL_OF:
        return LDM_TOP_LEVEL_OF[module.replace(".", "_")]
    for path, (ldm_block, renames) in ldm_names.items():
        if module.startswith(f"{path}."):
            rest = module.removeprefix(f"{path}.")
            rest = rest if renames is None else renames.get(rest)
            if rest is not None:
                return f"{ldm_block}_{rest}".replace(".", "_")
    raise ValueError(f"UNet module {module!r} has no LDM name; write it with names='diffusers'")


def _save_atomically(tensors: dict, file: Path, metadata: dict) -> Path:
    """Writes beside the destination, then renames: a reader never sees a half-written file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, file)
    finally:
        temporary.unlink(missing_ok=True)
    return file
