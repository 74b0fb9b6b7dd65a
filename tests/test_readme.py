"""The README's code blocks are run, so the README cannot drift from the code.

Covered elsewhere: the complete plugin example (tests/test_plugins.py) and the two set-up commands (they are
what .ci/run and tests/test_packaging.py do).
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from evs_framework.bench.suite import parse_suite
from evs_framework.cli import build_parser, main
from evs_framework.composition import load_composition_file, parse_composition
from evs_framework.evaluation.metrics import WEIGHT_FILES
from evs_framework.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    """The fenced blocks of `language` ("" for plain ones), in order."""
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S) if lang == language]


def block_starting(language: str, start: str) -> str:
    [block] = [b for b in blocks(language) if b.lstrip().startswith(start)]
    return block


def evs_command_lines() -> list[str]:
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("#")[0].strip()
            if command.startswith("evs ") and "[" not in command:  # [optional ...] is notation, not a command
                lines.append(command)
    return lines


def test_the_readme_shows_evs_commands():
    assert len(evs_command_lines()) >= 6


@pytest.mark.parametrize("command", evs_command_lines())
def test_every_evs_command_in_the_readme_parses(command):
    build_parser().parse_args(shlex.split(command)[1:])


@pytest.mark.parametrize("config", ["configs/enhance.json", "configs/native/sdxl_wan.yaml"])
def test_the_plans_shown_are_what_evs_plan_prints(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    shown = block_starting("", f"plan: composition IDM_VDM_IDM  ({config})")
    assert main(["plan", config, "--allow-missing"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(("warning", "    ", "  download",
                                                                                           "  run `evs fetch"))]
    assert printed == shown.rstrip("\n").splitlines()


def test_the_registry_example_adds_a_model(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text(block_starting("yaml", "models:"))
    assert main(["models", "--registry", str(tmp_path / "mine.yaml")]) == 0
    assert "\ndreamshaper " in "\n" + capsys.readouterr().out


def test_the_native_spec_example_has_no_problem(tmp_path):
    parsed = parse_spec(yaml.safe_load(block_starting("yaml", "inputs:")), "README", tmp_path, "readme")
    assert parsed.problems == ()
    assert parsed.spec.models["idm"].upscale == 2.0 and parsed.spec.settings.stable_steps == (8,)


def test_the_suite_example_is_a_valid_suite(plugins, registry):
    suite = parse_suite(yaml.safe_load(block_starting("yaml", "# a suite file")), registry, plugins, "README")
    assert suite.baseline in [cell.label for cell in suite.cells]


def test_the_composition_shown_is_the_shipped_one():
    shown = parse_composition(yaml.safe_load(block_starting("yaml", "# compositions/IDM_VDM_IDM.yaml")), "IDM_VDM_IDM",
                              "README")
    shipped = load_composition_file(ROOT / "compositions" / "IDM_VDM_IDM.yaml")
    assert (shown.stages, shown.per_window) == (shipped.stages, shipped.per_window)


def test_the_injection_example_loads(tmp_path):
    data = {"inputs": [{"video": "a.mp4", "prompt": "a"}], "models": {"idm": {"name": "EP"}},
            **yaml.safe_load(block_starting("yaml", "using_attn: true"))}
    assert parse_spec(data, "README", tmp_path).problems == ()


def test_the_metrics_weights_example_names_known_weights():
    assert set(yaml.safe_load(block_starting("yaml", "dino_vitb16:"))) <= set(WEIGHT_FILES)


def test_the_plugin_pyproject_example_declares_an_evs_entry_point():
    import tomllib

    project = tomllib.loads(block_starting("toml", "# its pyproject.toml"))
    assert project["project"]["entry-points"]["evs"] == {"midpoint": "evs_midpoint"}
