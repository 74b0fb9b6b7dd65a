"""Shared fixtures: the tiny random-weight model zoo, plugins, registry and small input clips."""

from __future__ import annotations

import json
import os

import pytest
import structlog
import torch

from evs_framework.io import video_io
from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.plugins import load_plugins
from evs_framework.registry import load_registry
from evs_framework.testing.zoo import build_tiny_zoo, make_synthetic_clip

# The original EVS example enhance config, key for key (shared/SEED.md).
SEED_EXAMPLE = {
    "using_attn": True,
    "pipeline_mode": "IDM_VDM_IDM",
    "idm_invert_mode": "random",
    "vdm_invert_mode": "random",
    "idm_invert_mode_2": "ddim",
    "vdm_type": "lightningEP",
    "idm_type": "EP_X2.0",
    "idm_inverse_strength": 0.4,
    "vdm_inverse_strength": 0.4,
    "stable_num": 2,
    "stable_steps": [8],
    "seed": 23,
}


# Core tests see EVS's own plugins only, whatever third-party plugins are installed beside it; tests of third-party
# loading install their own and clear this (the `site` fixture in test_plugins.py)
os.environ["EVS_PLUGINS"] = ""

# Two test workers share the machine's cores: one torch thread each (the CLI's default reads this variable too)
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def own_working_folder(tmp_path, monkeypatch):
    """Each test runs in a folder of its own, so a spec's default output folder (./outputs/<spec name>) never holds
    another test's outputs (a run keeps those of another run)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def default_logging():
    """The CLI configures structlog; put it back so each test starts from the library defaults."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return build_tiny_zoo(tmp_path_factory.mktemp("zoo") / "weights")


@pytest.fixture(scope="session")
def plugins():
    return load_plugins()


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture
def context(plugins, registry, zoo):
    return LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_backends(zoo, plugins, registry):
    """The tiny EP and lightningEP backends, loaded once: (context, backends by role)."""
    from evs_framework.planner import make_plan
    from evs_framework.runner import load_backends
    from tests.planning import native

    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    return context, load_backends(make_plan(native("clip.mp4"), registry, plugins), context)


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory):
    """An 8-frame 64x48 synthetic clip at 8 fps."""
    return video_io.write_video(tmp_path_factory.mktemp("clips") / "ball.mp4", make_synthetic_clip(8, 64, 48), 8.0)


@pytest.fixture
def seed_config(tmp_path, clip_file):
    """Writes the seed's example config for the given videos/prompts; returns its path."""

    def write(videos=(clip_file,), prompts=("a red ball on grass",), **changes):
        data = {"mp4_files": [str(v) for v in videos], "prompts": list(prompts), **SEED_EXAMPLE, **changes}
        path = tmp_path / "enhance.json"
        path.write_text(json.dumps(data))
        return path

    return write
