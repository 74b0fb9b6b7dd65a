"""torch.compile for loaded models: the denoising networks of the roles asked for and the frame VAEs, compiled in
place for the fixed shapes of a run, with inductor's cache kept on disk so that a new process reuses it.

Shapes are static (`dynamic=False`): a run calls each network with one or two shapes (guided and unguided batches),
and kernels for a fixed shape are the fastest. Modules shared between backends (one VAE behind both roles) are
compiled once; the T2I UNet and a motion UNet over the same spatial layers are separate top-level modules, each
compiled on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from evs_framework.errors import EVSError

ALL = "all"  # every role's network and the VAEs
VAE = "vae"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
DEFAULT_CACHE = Path("~/.cache/evs/torch-compile")


def parse_compile_parts(value: str | None) -> tuple[str, ...]:
    """`--compile` as parts: none (or empty), all, or a comma-separated choice of role names (the networks of the
    models in those roles) and vae. Role names are checked against the plan's (compiled_modules)."""
    if value is None or value.strip() in ("", "none"):
        return ()
    parts = tuple(p.strip() for p in value.split(","))
    bad = [p for p in parts if not p.isidentifier()]
    if bad:
        raise EVSError(f"--compile {value}: {bad[0]!r} is not a part; give all, none, vae or role names, comma-separated")
    return (ALL,) if ALL in parts else parts


def compiled_modules(backends: dict, parts: tuple[str, ...]) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) for what `parts` asks to compile, each module once: a role's `unet` (its denoising network),
    and the encoder and decoder of every frame VAE (a 3D VAE's causal frame loop is left eager)."""
    unknown = [p for p in parts if p not in (ALL, VAE, *backends)]
    if unknown:
        raise EVSError(f"--compile: {unknown[0]!r} is no role of this run's composition; give all, vae or some of "
                       f"{', '.join(backends)}")
    chosen, seen = [], set()

    def add(name, module):
        if module is not None and id(module) not in seen:
            seen.add(id(module))
            chosen.append((name, module))

    for role, backend in backends.items():
        if role in parts or ALL in parts:
            add(f"{role} network", backend.unet)
    if VAE in parts or ALL in parts:
        for role, backend in backends.items():
            vae = backend.codec.module
            if type(vae).__name__ == "AutoencoderKL":
                add(f"{role} VAE encoder", vae.encoder)
                add(f"{role} VAE decoder", vae.decoder)
    return chosen


def use_persistent_cache() -> None:
    """Inductor's cache in DEFAULT_CACHE unless the user chose a folder: torch's own default is under the temporary
    folder, which many systems empty at start-up. torch writes its default into the environment when it first looks,
    so that value counts as unchosen."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # an older torch
        unchosen = (None, "")
    else:
        unchosen = (None, "", default_cache_dir())
    if os.environ.get(CACHE_ENV) in unchosen:
        os.environ[CACHE_ENV] = str(DEFAULT_CACHE.expanduser())


def compile_backends(backends: dict, parts: tuple[str, ...], backend="inductor", mode: str | None = "default") -> list[str]:
    """Compile the modules `parts` names in place (nn.Module.compile); already compiled ones are left as they are.
    Returns the names compiled. Compilation itself happens at each module's first call (and again for a new shape)."""
    if backend == "inductor":
        use_persistent_cache()
    options = {"mode": mode} if backend == "inductor" else {}
    names = []
    for name, module in compiled_modules(backends, parts):
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile(backend=backend, dynamic=False, **options)
            names.append(name)
    return names
