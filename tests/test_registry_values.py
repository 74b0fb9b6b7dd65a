"""Registry values checked when the registry loads: every field's type and range, NaN and infinity refused, each
problem with its file, line and field, all at once as a RegistryError (never a traceback)."""

import pytest
import yaml

from evs_framework.cli import main
from evs_framework.errors import RegistryError
from evs_framework.registry import load_registry

ENTRY = """\
presets:
  mine:
    beta_schedule: linear
    steps: 8
    guidance: 1.0
models:
  lora:
    kind: sd15_lora
    type: t2i
    base: SD
    weights: {local: watercolor}
    options: {scale: 1.0}
    preset: sd15
  motion:
    kind: animatediff
    type: t2v
    base: SD
    weights: {local: AnimateLCM}
    options: {spatial_lora: lora.safetensors, spatial_lora_scale: 0.8}
    preset:
      beta_schedule: linear
      steps: 8
      guidance: 1.0
      trained_timesteps: [999, 499]
      frame_window: 32
      context_frames: 16
      latent_space: {name: sd1, channels: 4, spatial: 8, temporal: 1, size_multiple: 8}
  checkpoint:
    kind: sd15
    type: t2i
    weights: {local: epiCRealism}
    options: {config_from: SD}
    preset: mine
  wan:
    kind: wan
    type: t2v
    weights: {local: wan}
    options: {max_sequence_length: 512}
    preset: wan_t2v
"""
FIELDS = [  # (path of keys in the file, the field as problems name it)
    (("presets", "mine", "steps"), "$.presets.mine.steps"),
    (("presets", "mine", "guidance"), "$.presets.mine.guidance"),
    (("models", "lora", "options", "scale"), "$.models.lora.options.scale"),
    (("models", "lora", "base"), "$.models.lora.base"),
    (("models", "motion", "options", "spatial_lora_scale"), "$.models.motion.options.spatial_lora_scale"),
    (("models", "motion", "preset", "steps"), "$.models.motion.preset.steps"),
    (("models", "motion", "preset", "trained_timesteps"), "$.models.motion.preset.trained_timesteps"),
    (("models", "motion", "preset", "frame_window"), "$.models.motion.preset.frame_window"),
    (("models", "motion", "preset", "context_frames"), "$.models.motion.preset.context_frames"),
    (("models", "motion", "preset", "beta_schedule"), "$.models.motion.preset.beta_schedule"),
    (("models", "motion", "preset", "latent_space", "channels"), "$.models.motion.preset.latent_space.channels"),
    (("models", "motion", "preset", "latent_space", "spatial"), "$.models.motion.preset.latent_space.spatial"),
    (("models", "checkpoint", "options", "config_from"), "$.models.checkpoint.options.config_from"),
    (("models", "wan", "options", "max_sequence_length"), "$.models.wan.options.max_sequence_length"),
]
# values no field takes; null is refused by the fields that are not optional
BAD = {"negative": -3, "zero": 0, "huge": 10 ** 12, "nan": float("nan"), "inf": float("-inf"), "text": "abc",
       "list": [1], "null": None}
OPTIONAL = {"$.models.motion.preset.frame_window", "$.models.motion.preset.context_frames"}
LORA_SCALES = {"$.models.lora.options.scale", "$.models.motion.options.spatial_lora_scale"}  # negative ones undo a style
ACCEPTED = {("null", field) for field in OPTIONAL} | {("zero", "$.presets.mine.guidance")} | \
    {(bad, field) for bad in ("negative", "zero") for field in LORA_SCALES} | \
    {("list", "$.models.motion.preset.trained_timesteps")}


def written(tmp_path, keys, value):
    data = yaml.safe_load(ENTRY)
    place = data
    for key in keys[:-1]:
        place = place[key]
    place[keys[-1]] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_of_key(path, key_path):
    """The line the field's key is on, found by reading the file as text."""
    lines = path.read_text().splitlines()
    line, indent = 0, -1
    for key in key_path:
        line = next(i for i in range(line, len(lines)) if lines[i].strip().startswith(f"{key}:")
                    and len(lines[i]) - len(lines[i].lstrip()) > indent)
        indent = len(lines[line]) - len(lines[line].lstrip())
    return line + 1


def test_the_file_as_written_loads(tmp_path, plugins):
    path = tmp_path / "mine.yaml"
    path.write_text(ENTRY)
    registry = load_registry([path], plugins)
    assert registry.get("lora").options == {"scale": 1.0} and registry.get("motion").preset.context_frames == 16


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("keys, field", FIELDS)
def test_a_bad_value_is_named_with_file_line_and_field(tmp_path, plugins, keys, field, bad):
    path = written(tmp_path, keys, BAD[bad])
    if (bad, field) in ACCEPTED:
        load_registry([path], plugins)
        return
    with pytest.raises(RegistryError) as caught:
        load_registry([path], plugins)
    message = str(caught.value)
    assert f"{path}:{line_of_key(path, keys)}: {field}" in message, message


def test_every_problem_is_reported_at_once_by_the_cli(tmp_path, capsys):
    data = yaml.safe_load(ENTRY)
    data["models"]["lora"]["options"]["scale"] = "abc"
    data["models"]["motion"]["options"]["spatial_lora_scale"] = float("nan")
    data["presets"]["mine"]["steps"] = 0
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["models", "--registry", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 problem(s)" in err
    for field in ("$.models.lora.options.scale: expected a number, got string 'abc'",
                  "$.models.motion.options.spatial_lora_scale: nan", "$.presets.mine.steps: 0 is out of range"):
        assert field in err


def test_an_unknown_option_is_refused_with_the_known_ones(tmp_path, plugins):
    data = yaml.safe_load(ENTRY)
    data["models"]["lora"]["options"] = {"scael": 0.5}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RegistryError, match=r"\$\.models\.lora\.options: unknown key 'scael' \(did you mean 'scale'\?\)"):
        load_registry([path], plugins)
