"""The example third-party package under examples/ (installed here as pip would: its module and a dist-info with
its entry points) extends EVS through the public contracts alone: a sampler, a transfer with per-video state, a
planned composition with a setting, a backend and its model names, with plan totals equal to the calls made."""

import json
import shutil
import sys
import tomllib
from pathlib import Path

import attrs
import pytest
import torch

from evs_framework.planner import make_plan
from evs_framework.plugins import describe, load_plugins
from evs_framework.registry import load_registry
from evs_framework.runner import run_job
from tests.planning import native

PACKAGE = Path(__file__).parent.parent / "examples" / "evs_example_plugin"


@pytest.fixture
def example(tmp_path, monkeypatch):
    site = tmp_path / "site"
    shutil.copytree(PACKAGE / "evs_example_plugin", site / "evs_example_plugin")
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = "".join(f"{name} = {value}\n" for name, value in project["entry-points"]["evs"].items())
    (info / "entry_points.txt").write_text("[evs]\n" + points)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("EVS_PLUGINS", ",".join(project["entry-points"]["evs"]))  # it alone, not what is installed
    plugins = load_plugins()
    yield plugins, load_registry(plugins=plugins)
    sys.modules.pop("evs_example_plugin", None)


def spec_for(clips, tmp_path, k=4):
    spec = native(clips[0], "every_k", idm={"name": "EP_watercolor_prompt", "sampler": "midpoint"})
    inputs = tuple(attrs.evolve(spec.inputs[0], video=clip) for clip in clips)
    return attrs.evolve(spec, inputs=inputs, plugin_settings={"every_k": {"k": k}},
                        output=attrs.evolve(spec.output, dir=tmp_path, side_by_side=False))


def test_everything_it_provides_is_listed_under_its_name(example):
    plugins, registry = example
    provided = {(section, name) for plugin, section, names in describe(plugins) if plugin == "evs_example"
                for name in names}
    assert {("samplers", "midpoint"), ("transfers", "shared_noise"), ("compositions", "every_k"),
            ("backends", "prompt_prefix"), ("settings", "every_k"), ("noise_schedules", "karras")} <= provided
    assert registry.get("EP_watercolor_prompt") is registry.get("evs_example:EP_watercolor_prompt")


def test_evs_models_lists_its_models_once_with_their_bare_names(example, capsys):
    from evs_framework import cli

    plugins, registry = example
    assert cli.cmd_models(cli.build_parser().parse_args(["models"]), plugins, registry) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert "(also named EP_watercolor_prompt)" in out
    assert listed.count("evs_example:EP_watercolor_prompt") == 1 and "EP_watercolor_prompt" not in listed
    assert len(listed) == len(set(listed))


def test_its_composition_runs_with_exact_totals_and_its_settings(example, clip_file, tmp_path, zoo):
    from evs_framework.loading import LoadContext, WeightSettings

    plugins, registry = example
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    spec = spec_for([clip_file], tmp_path / "k4")
    plan = make_plan(spec, registry, plugins, context)
    idm_pieces = [op.steps for op in plan.ops if getattr(op, "steps", 0) and op.model == "idm"]
    assert idm_pieces[0] == 4 and max(idm_pieces) == 4
    assert any(getattr(op, "strategy", None) == "shared_noise" for op in plan.ops)
    [result] = run_job(spec, plan, context, progress=False)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["unplanned_calls"] == []
    assert sidecar["unet_calls"] == {role: t["unet_calls"] for role, t in plan.totals().items()}
    assert plan.totals()["idm"]["unet_calls"] == 2 * sum(2 * n for n in idm_pieces) - 2  # midpoint, guided; 1 into 0


def test_its_transfer_keeps_state_per_video_not_per_process(example):
    """Within a video every hand-over reuses the video's noise; another video draws its own."""
    from evs_framework.transfer import TransferContext

    plugins, _ = example
    transfer = plugins.catalogue.get("transfers", "shared_noise")
    clean = torch.zeros(2, 4, 8, 8)

    def hand_over(video_state, seed, sigma_to=1.0):
        return transfer.run(TransferContext(clean, None, 0.0, sigma_to, (0.0, sigma_to), None, 1.0,
                                            torch.Generator().manual_seed(seed), video_state=video_state))

    first_video, second_video = {}, {}
    noise = hand_over(first_video, seed=1)
    torch.testing.assert_close(hand_over(first_video, seed=2, sigma_to=2.0), 2 * noise)  # the same noise again
    assert not torch.allclose(hand_over(second_video, seed=2), noise)  # not another video's


def test_its_backend_reads_prompts_with_its_prefix(example, zoo):
    from evs_framework.loading import LoadContext, WeightSettings

    plugins, registry = example
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    entry = registry.get("EP_watercolor_prompt")
    backend = plugins.catalogue.get("backends", "prompt_prefix")(entry, context)
    base = plugins.catalogue.get("backends", "sd15")(registry.get("EP"), context)
    torch.testing.assert_close(backend.encode_prompts(["", "a ball"]),
                               base.encode_prompts(["", "a watercolor painting of a ball"]))


def test_its_noise_schedule_samples_at_karras_sigmas_with_exact_totals(example, clip_file, tmp_path, zoo):
    from evs_framework.loading import LoadContext, WeightSettings

    plugins, registry = example
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    spec = attrs.evolve(native(clip_file, "IDM", idm={"name": "EP_karras"}),
                        output=attrs.evolve(native(clip_file, "IDM").output, dir=tmp_path, side_by_side=False))
    plan = make_plan(spec, registry, plugins, context)
    levels = plan.models["idm"].schedule.levels
    sigmas = plan.models["idm"].schedule.train.betas.sigmas
    low, high = float(sigmas[0]) ** (1 / 7), float(sigmas[-1]) ** (1 / 7)
    karras = [(high + i / 19 * (low - high)) ** 7 for i in range(20)]
    assert levels[:-1] == pytest.approx(karras, rel=1e-6) and levels[-1] == 0.0
    [result] = run_job(spec, plan, context, progress=False)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["unplanned_calls"] == [] and sidecar["unet_calls"]["idm"] == plan.totals()["idm"]["unet_calls"] > 0


def test_it_imports_evs_only_through_the_public_surface():
    import ast
    import subprocess

    import evs_framework

    tree = ast.parse((PACKAGE / "evs_example_plugin" / "__init__.py").read_text())
    modules = {node.module: [a.name for a in node.names] for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evs")}
    assert set(modules) <= {"evs_framework", "evs_framework.hookspecs"}, modules
    assert set(modules.get("evs_framework", [])) <= set(evs_framework.__all__)
    for name in evs_framework.__all__:  # every public name resolves
        assert getattr(evs_framework, name) is not None
    cheap = subprocess.run([sys.executable, "-c", "import sys, evs_framework; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert cheap.stdout.strip() == "False"  # importing the package alone loads nothing heavy
