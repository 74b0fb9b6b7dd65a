"""Reading a weights file into a state dict: safetensors by default, pickles only when the user allows them."""

from __future__ import annotations

from pathlib import Path

import torch

from evs_framework.errors import WeightsError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def refuse_pickled_folder(folder: Path, allow_pickle: bool) -> None:
    """A diffusers/transformers folder whose weights exist only as pickles is refused unless pickles are allowed (the
    libraries would otherwise fall back to the .bin file and unpickle it)."""
    if allow_pickle:
        return
    for directory in [Path(folder), *(p for p in Path(folder).rglob("*") if p.is_dir())]:
        files = [p for p in directory.iterdir() if p.is_file()]
        pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not any(p.suffix.lower() == ".safetensors" for p in files):
            raise WeightsError(f"{pickles[0]} is a pickled checkpoint, and pickles can run code when opened; pass "
                               f"--allow-pickle if you trust the file (or convert the folder to .safetensors)")


def check_diffusers_folder(path: Path, subfolders: tuple[str, ...], family: str, fix: str, allow_pickle: bool) -> None:
    """`path` is a diffusers folder of `family` holding every one of `subfolders`, with weights that load safely."""
    missing = [name for name in subfolders if not (path / name).is_dir()]
    if not path.is_dir() or missing:
        raise WeightsError(f"{path} is not a diffusers {family} folder: it lacks {', '.join(missing) or 'everything'}; "
                           f"{fix}")
    refuse_pickled_folder(path, allow_pickle)


def read_state_dict(file: Path, allow_pickle: bool = False, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The tensors of `file`. A pickle (.ckpt/.pt/.pth/.bin) can run code when opened, so it is read only with
    `allow_pickle`, and then with `weights_only=True`; a PyTorch Lightning `state_dict` wrapper is unwrapped."""
    file = Path(file)
    if not file.is_file():
        raise WeightsError(f"{what} {file} does not exist; check the path or the weights folder")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as error:  # safetensors raises its own SafetensorError (and OSError) on a bad file
            raise WeightsError(f"could not read {what} {file}: {error}; download it again") from error
    if suffix not in PICKLE_SUFFIXES:
        raise WeightsError(f"{file}: unknown weights format {suffix!r}; expected .safetensors (or a pickled "
                           f"{'/'.join(PICKLE_SUFFIXES)} file with --allow-pickle)")
    if not allow_pickle:
        raise WeightsError(f"{file} is a pickled checkpoint, and pickles can run code when opened; pass --allow-pickle "
                           f"if you trust the file (or convert it to .safetensors)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses pickles holding anything but tensors and plain containers
        raise WeightsError(f"could not read pickled {what} {file}: {error}; convert it to .safetensors") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{file} holds a {type(state).__name__}, not a state dict")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
