"""Third-party plugins, installed the way a real package installs them (an `evs` entry point)."""

import json
import os
import sys
import textwrap

import pytest
import torch

from evs_framework.cli import main
from evs_framework.errors import PluginError
from evs_framework.plugins import load_plugins

TOY_PLUGIN = '''
"""A third-party EVS plugin: a backend kind and a composition, with no change to EVS itself."""
import torch

from evs_framework.composition import Composition, Stage
from evs_framework.hookspecs import hookimpl
from evs_framework.io.vae import FrameCodec, frame_vae_space
from evs_plugins.sd15 import sd15_parts

CALLS = []


class ShrinkBackend:
    """Predicts the noise as a fixed fraction of its input; borrows its base model's VAE."""

    unet = text_encoder = None  # no weights of its own to offload

    def __init__(self, parts):
        self.codec = FrameCodec(parts.vae, frame_vae_space("sd1", parts.vae))

    def encode_prompts(self, prompts):
        return torch.zeros(len(prompts), 77, 32)

    def predict(self, x, timestep, text):
        CALLS.append(timestep)
        return 0.1 * x


def load(entry, context):
    return ShrinkBackend(sd15_parts(context.registry.get(entry.base), context))


@hookimpl
def register_backends(register):
    register("toy_t2i", load)


@hookimpl
def register_compositions(register):
    register("toy_two_pass", Composition("toy_two_pass", "two passes of one model", stages=(
        Stage(model="idm", enter="random", start=0.5, steps=2),
        Stage(model="idm", enter="ddim_renoise", start="resume", stop="end"),
    )))
'''

DUPLICATE_PLUGIN = '''
from evs_framework.composition import Composition, Stage
from evs_framework.hookspecs import hookimpl


@hookimpl
def register_compositions(register):
    register("IDM", Composition("IDM", stages=(Stage(model="idm", enter="random", start=1.0, stop="end"),)))
'''

TOY_REGISTRY = """
models:
  toy:
    kind: toy_t2i
    type: t2i
    base: SD
    weights: {}
    preset: {beta_schedule: scaled_linear, steps: 10, guidance: 1.0}
"""


def install(site, dist: str, entry_name: str, module: str, source: str) -> None:
    """Write a module and its dist-info with an `evs` entry point, as pip would, and let EVS load it (alone with the
    others a test installs: plugins installed on the machine stay out)."""
    os.environ["EVS_PLUGINS"] = ",".join(filter(None, [os.environ.get("EVS_PLUGINS"), entry_name]))
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[evs]\n{entry_name} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("EVS_PLUGINS", "")  # install() adds each plugin it writes; set back after the test
    yield folder
    for module in ("evs_toy_plugin", "evs_dup_plugin"):
        sys.modules.pop(module, None)


def test_third_party_backend_and_composition_run(site, tmp_path, zoo, clip_file, capsys):
    install(site, "evs_toy_plugin", "toy", "evs_toy_plugin", TOY_PLUGIN)
    (tmp_path / "toy.yaml").write_text(TOY_REGISTRY)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"videos: [{clip_file}]\nprompts: [a ball]\nmodels: {{idm: {{name: toy}}}}\n"
                    f"composition: toy_two_pass\noutput: {{dir: out, side_by_side: false}}\n")

    assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "toy" in listing and "toy_t2i" in listing and "toy_two_pass" in listing

    code = main(["run", str(spec), "--registry", str(tmp_path / "toy.yaml"), "--weights-dir", str(zoo), "-q"])
    assert code == 0
    calls = sys.modules["evs_toy_plugin"].CALLS
    assert len(calls) == 5  # 10 steps x strength 0.5, no guidance: one call per step
    sidecar = json.loads((tmp_path / "out" / "ball.toy_two_pass.json").read_text())
    assert sidecar["composition"] == "toy_two_pass" and sidecar["models"] == {"idm": "toy"}


def test_a_plugin_cannot_take_a_built_in_name_and_is_reached_by_its_own(site):
    install(site, "evs_dup_plugin", "dup", "evs_dup_plugin", DUPLICATE_PLUGIN)
    catalogue = load_plugins().catalogue
    built_in = catalogue.get("compositions", "IDM")
    assert catalogue.sections["compositions"]["IDM"].plugin == "compositions"  # EVS keeps its name
    assert catalogue.get("compositions", "dup:IDM") is not built_in
    assert catalogue.get("compositions", "dup:IDM").stages[0].start == 1.0


def test_a_name_two_plugins_give_must_be_qualified(site):
    install(site, "evs_dup_plugin", "dup", "evs_dup_plugin", DUPLICATE_PLUGIN.replace('"IDM"', '"shared"'))
    install(site, "evs_toy_plugin", "dup2", "evs_toy_plugin", DUPLICATE_PLUGIN.replace('"IDM"', '"shared"'))
    catalogue = load_plugins().catalogue
    with pytest.raises(PluginError, match="composition 'shared' is provided by plugins 'dup' and 'dup2'; say which: "
                                          "dup:shared or dup2:shared"):
        catalogue.get("compositions", "shared")
    assert catalogue.get("compositions", "dup2:shared").name == "shared"


def test_environment_variable_limits_third_party_plugins(site, monkeypatch):
    install(site, "evs_toy_plugin", "toy", "evs_toy_plugin", TOY_PLUGIN)
    install(site, "evs_dup_plugin", "dup", "evs_dup_plugin", DUPLICATE_PLUGIN)
    monkeypatch.setenv("EVS_PLUGINS", "toy")
    assert "toy_t2i" in load_plugins().catalogue.names("backends")
    monkeypatch.setenv("EVS_PLUGINS", "")
    plugins = load_plugins()
    assert "toy_t2i" not in plugins.catalogue.names("backends")
    assert "sd15" in plugins.catalogue.names("backends")  # built-ins always load


def test_a_broken_plugin_says_which_one(site):
    install(site, "evs_toy_plugin", "toy", "evs_toy_plugin", "raise ImportError('needs a missing package')")
    with pytest.raises(PluginError, match="plugin 'toy' .* failed to import: needs a missing package"):
        load_plugins()


def test_the_readme_plugin_example_works(tmp_path, monkeypatch):
    """The complete plugin in README.md loads through pluggy and its sampler and composition are usable."""
    import re
    from pathlib import Path

    from evs_framework.denoiser import Prediction
    from evs_framework.sampler import single_step

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    source = re.search(r"```python\n(# evs_midpoint/__init__.py\n.*?)```", readme, re.S).group(1)
    (tmp_path / "evs_midpoint.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    import evs_midpoint

    catalogue = load_plugins(extra=[evs_midpoint]).catalogue
    assert "IDM_then_VDM_polish" in catalogue.names("compositions")
    midpoint = catalogue.get("samplers", "midpoint")
    # on an exact denoiser of data that is all zeros, eps = x / sigma and one step lands exactly on sigma_next
    x = torch.ones(1, 4, 2, 2)
    calls = []

    def denoise(x, sigma):
        calls.append(sigma)
        return Prediction(torch.zeros_like(x), x / sigma)

    x_next, _ = single_step(midpoint, denoise, x, 2.0, 1.0)
    torch.testing.assert_close(x_next, 0.5 * x)
    assert len(calls) == 2 and midpoint.calls((2.0, 1.0, 0.0), {}) == 3  # two, then one into sigma 0
    sys.modules.pop("evs_midpoint", None)


REGISTRY_PLUGIN = '''
from pathlib import Path

from evs_framework.hookspecs import hookimpl


@hookimpl
def registry_files():
    return [Path(__file__).with_name("{name}_models.yaml")]
'''

PLUGIN_MODELS = """
models:
  SD:             # EVS's own registry has this name: reachable as <plugin>:SD only
    kind: sd15
    type: t2i
    weights: {local: other-sd}
    preset: sd15
  myLightning:    # a motion adapter over the plugin's own SD, with a preset from EVS's registry
    kind: animatediff
    type: t2v
    base: SD
    weights: {local: my_adapter.safetensors}
    preset: lightning_8step
"""


def install_registry_plugin(site, dist, name):
    install(site, dist, name, dist, REGISTRY_PLUGIN.replace("{name}", name))
    (site / f"{name}_models.yaml").write_text(PLUGIN_MODELS)


def test_a_plugin_ships_model_names_namespaced_and_never_replacing_evs_own(site):
    from evs_framework.registry import load_registry

    install_registry_plugin(site, "evs_toy_plugin", "toy")
    registry = load_registry(plugins=load_plugins())
    assert registry.get("SD").weights.local != "other-sd"  # EVS's SD stays
    assert registry.get("toy:SD").weights.local == "other-sd"
    lightning = registry.get("myLightning")
    assert lightning is registry.get("toy:myLightning") and lightning.base == "toy:SD"  # its base is the plugin's SD
    assert lightning.preset.steps == 8 and lightning.preset.spacing == "trailing"


def test_a_model_name_two_plugins_ship_must_be_qualified(site):
    from evs_framework.errors import RegistryError
    from evs_framework.registry import load_registry

    install_registry_plugin(site, "evs_toy_plugin", "toy")
    install_registry_plugin(site, "evs_dup_plugin", "dup")
    registry = load_registry(plugins=load_plugins())
    with pytest.raises(RegistryError, match="model name 'myLightning' is given by plugins 'dup' and 'toy'; say which: "
                                            "dup:myLightning or toy:myLightning"):
        registry.get("myLightning")
    assert registry.get("dup:myLightning").base == "dup:SD"
