"""The compositions shipped as YAML under compositions/ (one file per composition, named by its stem)."""

from __future__ import annotations

from pathlib import Path

from evs_framework.composition import load_composition_file
from evs_framework.hookspecs import hookimpl
from evs_framework.registry import PACKAGE_DATA

COMPOSITIONS_DIR = Path(str(PACKAGE_DATA / "compositions"))
# the paper's two roles: its T2I ("image diffusion model") and its T2V ("video diffusion model")
PAPER_ROLES = {"idm": "t2i", "vdm": "t2v"}


@hookimpl
def register_compositions(register):
    for file in sorted(COMPOSITIONS_DIR.glob("*.yaml")):
        composition = load_composition_file(file)
        register(composition.name, composition)
