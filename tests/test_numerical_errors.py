"""What the NaN message says: the op and sigma, the precision the model runs in (half precision is blamed only when
the model runs in it), and any setting of the op that was itself NaN."""

import types

import pytest
import torch

from evs_framework.denoiser import Denoiser
from evs_framework.errors import NumericalError
from evs_framework.executor import execute
from evs_framework.plan import DenoiseOp
from evs_framework.schedules import BetaSchedule


class NaNBackend:
    """A model whose every output is NaN, with weights of `dtype`."""

    def __init__(self, dtype):
        self.unet = torch.nn.Linear(1, 1).to(dtype)

    def predict(self, x, timestep, conditioning):
        return torch.full_like(x, float("nan"))


def run_nan(dtype=torch.float32, guidance=7.5, op_guidance=None, plugins=None):
    schedule = BetaSchedule("scaled_linear")
    op = DenoiseOp(stage=0, model="idm", sampler="euler", first_level=2, stop_level=0, sigmas=(2.0, 1.0, 0.0),
                   timesteps=(900, 700), unet_calls=4, guidance=op_guidance)
    denoiser = Denoiser(NaNBackend(dtype), schedule, torch.zeros(2, 1), guidance)
    with pytest.raises(NumericalError) as caught:
        execute(types.SimpleNamespace(ops=[op]), {"idm": denoiser}, torch.zeros(1, 4, 8, 8), plugins.catalogue,
                torch.Generator().manual_seed(0))
    return str(caught.value)


def test_a_float32_run_is_not_told_to_use_float32(plugins):
    message = run_nan(torch.float32, plugins=plugins)
    assert "op 1 (denoise idm)" in message and "at sigma 2" in message and "running in float32" in message
    assert "half precision" not in message and "--dtype float32" not in message


def test_a_half_precision_run_is_told_to_try_float32(plugins):
    message = run_nan(torch.bfloat16, plugins=plugins)
    assert "running in bfloat16" in message and "--dtype float32" in message


@pytest.mark.parametrize("guidance, op_guidance", [(float("nan"), None), (7.5, float("inf"))])
def test_a_nan_setting_is_named_instead_of_the_precision(plugins, guidance, op_guidance):
    message = run_nan(torch.bfloat16, guidance, op_guidance, plugins=plugins)
    assert "its guidance is NaN or infinite" in message and "--dtype" not in message
