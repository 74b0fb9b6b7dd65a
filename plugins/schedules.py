"""Built-in noise schedule kinds and prediction types.

`betas`: a discrete DDPM schedule from the preset's beta_schedule, beta_start, beta_end and train_steps, with
`schedule_params: {zero_terminal_snr: true}` for models trained on rescaled betas. `flow_matching`: straight paths
with `schedule_params: {shift: ...}`. Prediction types: epsilon, v_prediction, sample, flow.
"""

from __future__ import annotations

from evs_framework.hookspecs import hookimpl
from evs_framework.predictions import PREDICTION_TYPES
from evs_framework.schedules import BetaSchedule, FlowMatchingSchedule


def _params(kind: str, preset, allowed: dict) -> dict:
    unknown = sorted(set(preset.schedule_params) - set(allowed))
    if unknown:
        raise ValueError(f"schedule {kind!r} takes no parameter {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(allowed) or 'none'}")
    return {**allowed, **preset.schedule_params}


def betas(preset) -> BetaSchedule:
    params = _params("betas", preset, {"zero_terminal_snr": False})
    return BetaSchedule(preset.beta_schedule, preset.beta_start, preset.beta_end, preset.train_steps,
                        bool(params["zero_terminal_snr"]))


def flow_matching(preset) -> FlowMatchingSchedule:
    params = _params("flow_matching", preset, {"shift": 1.0})
    return FlowMatchingSchedule(float(params["shift"]), preset.train_steps)


@hookimpl
def register_noise_schedules(register):
    register("betas", betas)
    register("flow_matching", flow_matching)


@hookimpl
def register_prediction_types(register):
    for name, convert in PREDICTION_TYPES.items():
        register(name, convert)
