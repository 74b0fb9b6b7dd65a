"""EVS Framework: the public surface. Plugins (the example package under examples/ included) import from here and
from `evs_framework.hookspecs` only; everything else may move between releases.

Names load on first use, so `import evs_framework` stays cheap (the CLI starts without torch's import time until it
needs it).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    # running EVS from Python
    "Composer": "evs_framework.api", "Result": "evs_framework.api", "prepare_job": "evs_framework.api",
    "load_context": "evs_framework.api", "run_job": "evs_framework.runner", "format_plan": "evs_framework.plan_text",
    # compositions: stages over named latents, declared roles
    "Composition": "evs_framework.composition", "Stage": "evs_framework.composition",
    "StageOp": "evs_framework.composition", "Cycle": "evs_framework.composition", "Fork": "evs_framework.composition",
    "Merge": "evs_framework.composition", "PlanBuilder": "evs_framework.planner",
    # what plugins provide
    "Sampler": "evs_framework.sampler", "StepContext": "evs_framework.sampler",
    "Transfer": "evs_framework.transfer", "TransferContext": "evs_framework.transfer",
    "fresh_noise": "evs_framework.transfer", "Prediction": "evs_framework.denoiser",
    "BetaSchedule": "evs_framework.schedules", "ModelSchedule": "evs_framework.schedules",
    "hookimpl": "evs_framework.hookspecs",
    # errors a plugin raises to be reported as EVS's own (one line, no traceback)
    "EVSError": "evs_framework.errors", "SpecError": "evs_framework.errors", "PlanError": "evs_framework.errors",
    "WeightsError": "evs_framework.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'evs_framework' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
