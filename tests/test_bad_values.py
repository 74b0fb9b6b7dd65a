"""A value found bad is reported and then kept out of every later computation: each numeric field of a native spec,
set to a bad value, ends in one error naming that field, never in an exception of the code that would have used it."""

import copy
import math

import pytest

from evs_framework.api import prepare_job
from evs_framework.cli import main
from evs_framework.errors import EVSError, SpecError
from evs_framework.io import video_io
from evs_framework.spec import parse_spec
from evs_framework.testing.zoo import make_synthetic_clip

BASE = {
    "inputs": [{"video": "clip.mp4", "prompt": "a red disc", "seed": 5}],
    "models": {"idm": {"name": "toyI", "upscale": 1.5, "guidance": 2.0, "steps": 20, "cache": {"interval": 3, "depth": 1}},
               "vdm": {"name": "toyV", "steps": 8, "context": {"frames": 8, "overlap": 2},
                       "cache": {"interval": 2, "depth": 2}}},
    "composition": "IDM_VDM_IDM",
    "settings": {"idm_inverse_strength": 0.5, "vdm_inverse_strength": 0.5, "stable_steps": [5], "stable_num": 2,
                 "inversion_guidance": 1.0},
    "using_attn": True,
    "injection": {"window": [0.0, 0.5], "max_cache_gib": 4.0},
    "video": {"max_frames": 16, "stride": 1, "size": [128, 128]},
    "output": {"dir": "out", "decode_chunk": 4},
    "seed": 23,
    "negative_prompt": "",
}

# every number a spec holds, as a path of keys and list indices
NUMERIC_FIELDS = [
    ("settings", "idm_inverse_strength"), ("settings", "vdm_inverse_strength"), ("settings", "stable_steps", 0),
    ("settings", "stable_num"), ("settings", "inversion_guidance"), ("seed",), ("inputs", 0, "seed"),
    ("models", "idm", "upscale"), ("models", "idm", "guidance"), ("models", "idm", "steps"), ("models", "vdm", "steps"),
    ("models", "vdm", "context", "frames"), ("models", "vdm", "context", "overlap"), ("models", "idm", "cache", "interval"),
    ("models", "idm", "cache", "depth"), ("models", "vdm", "cache", "interval"), ("models", "vdm", "cache", "depth"),
    ("video", "max_frames"),
    ("video", "stride"), ("video", "size", 0), ("video", "size", 1), ("output", "decode_chunk"),
    ("injection", "window", 1), ("injection", "max_cache_gib"),
]
BAD_VALUES = [-1, 0, 10**9, 2**70, 1e300, math.nan, math.inf, -math.inf, "abc", None, True, [], {}]


def _with(data: dict, path: tuple, value) -> dict:
    changed = copy.deepcopy(data)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


def _place(path: tuple) -> str:
    return "$" + "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_values")
    video_io.write_video(folder / "clip.mp4", make_synthetic_clip(16, 128, 128), 8.0)
    return folder


def test_the_base_spec_prepares(folder, plugins, registry):
    job = prepare_job(parse_spec(BASE, "base", folder, "base"), plugins=plugins, registry=registry, source="base",
                      device="cpu")
    assert job.plan.models.keys() == {"idm", "vdm"} and job.plan.extras  # feature injection planned its cache


@pytest.mark.parametrize("path", NUMERIC_FIELDS, ids=_place)
def test_a_bad_number_ends_in_one_error_naming_it(folder, plugins, registry, path):
    for value in BAD_VALUES:
        data = _with(BASE, path, value)
        try:
            prepare_job(parse_spec(data, "fuzz", folder, "fuzz"), plugins=plugins, registry=registry, source="fuzz",
                        device="cpu")
        except SpecError as error:
            # the field changed is named, and nothing of what the spec did not write is
            assert _place(path) in str(error) or _place(path[:-1]) in str(error), (value, str(error))
        except EVSError as error:
            pytest.fail(f"{_place(path)} = {value!r}: {type(error).__name__} outside the one round: {error}")
        except Exception as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{_place(path)} = {value!r}: {type(error).__name__}: {error}")


@pytest.mark.parametrize("change, named", [
    ({"settings": {"stable_steps": [-1]}}, "$.settings.stable_steps[0]: -1 is negative"),
    ({"video": {"stride": 0}}, "$.video.stride: 0"),
    ({"models": {"idm": {"name": "toyI", "upscale": 1e9}, "vdm": {"name": "toyV"}}}, "$.models.idm.upscale"),
])
def test_the_filed_examples_end_in_one_error_from_the_cli(folder, tmp_path, capsys, change, named):
    import yaml

    spec = tmp_path / "job.yaml"
    data = {**BASE, "inputs": [{"video": str(folder / "clip.mp4"), "prompt": "a red disc"}], **change}
    spec.write_text(yaml.safe_dump(data))
    for command in ("plan", "run"):
        assert main([command, str(spec), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err and err.count("\n  - ") == 1, err
