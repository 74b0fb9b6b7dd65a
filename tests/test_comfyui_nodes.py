"""The ComfyUI node pack (examples/comfyui_evs) used the way ComfyUI uses it, without ComfyUI (not on PyPI): imported
as a custom_nodes package, its declarations read and every input validated by ComfyUI's rules (tests/comfyui_rules.py),
its FUNCTIONs called with IMAGE batches under inference mode, and its example workflows validated and the toy one run
with stand-ins for VideoHelperSuite's and ComfyUI's own nodes."""

from __future__ import annotations

import json
import sys
import traceback
import types
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import yaml

from evs_framework.api import Composer
from evs_framework.cli import main
from evs_framework.toyworld.world import render, sample_spec
from tests.comfyui_rules import declaration_problems, execute, load_pack, validate_prompt, workflow_prompt

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "examples" / "comfyui_evs"
WORKFLOWS = sorted((PACK / "workflows").glob("*.json"))
TOY_CLIPS = ROOT / "examples" / "toy"
CHEAP = {"composition": "IDM_VDM_IDM", "idm_inverse_strength": 0.3, "vdm_inverse_strength": 0.3, "stable_steps": 3,
         "stable_num": 1}  # 15 UNet calls of the toy models
SEED = 5


@pytest.fixture(scope="module")
def pack():
    return load_pack(PACK, "comfyui_evs")


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def clip():
    """A held-out toy clip of 8 frames as a ComfyUI IMAGE batch: (frames, height, width, 3) floats in [0, 1]."""
    scene = sample_spec(10**9, frames=8)
    return (render([scene], frames=8)[0].permute(0, 2, 3, 1) + 1) / 2, scene.prompt


@pytest.fixture(scope="module")
def models(nodes):
    with torch.inference_mode():
        return nodes["EVSLoadModels"]().load("toyI", "toyV", "cpu", "auto", 1.0)[0]


@pytest.fixture(scope="module")
def composed(nodes, models, clip):
    frames, prompt = clip
    with torch.inference_mode():
        return nodes["EVSComposeVideo"]().compose(models, frames, prompt, seed=SEED, **CHEAP)


def spec_file(folder: Path, settings: dict) -> Path:
    """A native spec with the toy models and the settings the nodes were given, for `evs plan`."""
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "inputs": [{"video": str(TOY_CLIPS / "toy_clip_1.mp4"), "prompt": "a clip"}],
        "models": {"idm": {"name": "toyI"}, "vdm": {"name": "toyV"}}, "composition": settings["composition"],
        "settings": {**{k: v for k, v in settings.items() if k != "composition"},
                     "stable_steps": [settings["stable_steps"]]}}))
    return path


def test_the_pack_declares_its_nodes_as_comfyui_reads_them(nodes, pack):
    assert set(nodes) == set(pack.NODE_DISPLAY_NAME_MAPPINGS) == {"EVSLoadModels", "EVSComposeVideo", "EVSPlan"}
    for name, node_class in nodes.items():
        assert declaration_problems(node_class) == [], name
        assert node_class.CATEGORY == "EVS"
    assert nodes["EVSLoadModels"].RETURN_TYPES == ("EVS_MODELS",)
    for user in ("EVSComposeVideo", "EVSPlan"):  # the custom type passes from the loader to the nodes using it
        assert nodes[user].INPUT_TYPES()["required"]["models"][0] == "EVS_MODELS"
    assert nodes["EVSComposeVideo"].INPUT_TYPES()["required"]["frames"][0] == "IMAGE"
    assert nodes["EVSComposeVideo"].RETURN_TYPES[0] == "IMAGE"
    assert nodes["EVSPlan"].OUTPUT_NODE is True and nodes["EVSPlan"].RETURN_TYPES == ("STRING",)
    load_inputs = nodes["EVSLoadModels"].INPUT_TYPES()["required"]
    assert {"toyI", "EP", "SDXL"} <= set(load_inputs["idm"][0]) and "toyV" not in load_inputs["idm"][0]
    assert {"toyV", "lightningEP", "wan2.1-1.3B"} <= set(load_inputs["vdm"][0])
    assert {"IDM_VDM_IDM", "IDM", "VDM", "basic"} <= set(nodes["EVSPlan"].INPUT_TYPES()["required"]["composition"][0])


def test_the_validator_rejects_what_comfyui_rejects(nodes):
    good = {"1": {"class_type": "EVSLoadModels",
                  "inputs": {"idm": "toyI", "vdm": "toyV", "device": "cpu", "dtype": "auto", "idm_upscale": 1.0}},
            "2": {"class_type": "EVSPlan", "inputs": {"models": ["1", 0], **CHEAP}}}
    assert validate_prompt(good, nodes) == {}
    bad = json.loads(json.dumps(good))
    bad["1"]["inputs"].update(idm="toyV", idm_upscale=8.0)
    bad["2"]["inputs"].update(composition="EVS2", idm_inverse_strength=1.5, stable_num=0, stable_steps="three")
    del bad["2"]["inputs"]["vdm_inverse_strength"]
    errors = validate_prompt(bad, nodes)
    found = {(node, e["type"], e["details"].split(":")[0].split(",")[0]) for node, es in errors.items() for e in es}
    assert found == {("1", "value_not_in_list", "idm"), ("1", "value_bigger_than_max", "idm_upscale"),
                     ("2", "value_not_in_list", "composition"), ("2", "value_bigger_than_max", "idm_inverse_strength"),
                     ("2", "value_smaller_than_min", "stable_num"), ("2", "invalid_input_type", "stable_steps"),
                     ("2", "required_input_missing", "vdm_inverse_strength")}
    linked_wrong = {**good, "3": {"class_type": "EVSComposeVideo",
                                  "inputs": {"models": ["1", 0], "frames": ["1", 0], "prompt": "p", "seed": 1, **CHEAP}}}
    [mismatch] = validate_prompt(linked_wrong, nodes)["3"]
    assert mismatch["type"] == "return_type_mismatch" and mismatch["details"].startswith("frames")


def test_compose_returns_an_image_batch_of_the_clip(composed, clip):
    frames, plan = composed
    assert frames.shape == clip[0].shape == (8, 128, 128, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    assert (frames - clip[0]).abs().mean() > 0.002  # composed, not passed through
    assert plan.startswith("plan: composition IDM_VDM_IDM")


def test_the_nodes_add_nothing_to_composer(composed, clip):
    reference = Composer({"models": {"idm": {"name": "toyI"}, "vdm": {"name": "toyV"}}, "video": {"max_frames": None},
                          "composition": CHEAP["composition"],
                          "settings": {**{k: v for k, v in CHEAP.items() if k != "composition"}, "stable_steps": [3]}},
                         device="cpu")
    expected = reference(clip[0], clip[1], seed=SEED)
    assert torch.equal(composed[0], expected.frames) and composed[1] == expected.record["plan"]


def test_the_plan_node_shows_what_evs_plan_prints(nodes, models, tmp_path, capsys):
    shown = nodes["EVSPlan"]().plan(models, **CHEAP)
    [text] = shown["result"]
    assert shown["ui"] == {"text": [text]}
    assert main(["plan", str(spec_file(tmp_path, CHEAP))]) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = text.splitlines()
    assert printed[0].startswith(lines[0] + "  (") and printed[1:len(lines)] == lines[1:]  # the CLI adds the file


def test_a_bad_value_gives_the_clis_message_without_evs_traceback(pack, nodes, models, clip, tmp_path, capsys):
    beyond = {**CHEAP, "stable_steps": 30}  # the T2I runs 7 steps at strength 0.3
    assert main(["plan", str(spec_file(tmp_path, beyond))]) == 2
    [problem] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert "stable_steps[0]=30 must be smaller than the 7 steps" in problem
    for call in (lambda: nodes["EVSPlan"]().plan(models, **beyond),
                 lambda: nodes["EVSComposeVideo"]().compose(models, clip[0], clip[1], seed=1, **beyond)):
        with pytest.raises(pack.nodes.EVSNodeError) as raised:
            call()
        assert problem in str(raised.value)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
        assert not any("evs_framework" in frame.filename for frame in traceback.extract_tb(raised.value.__traceback__))


def test_more_settings_reach_evs_and_their_problems_are_named(pack, nodes, models):
    text = nodes["EVSPlan"]().plan(models, **CHEAP, more_settings="stable_steps: [4, 2]")["result"][0]
    assert sum(" denoise   toyV " in line for line in text.splitlines()) == 2  # a T2V window at each entry
    with pytest.raises(pack.nodes.EVSNodeError, match="settings: unknown key 'stable'"):
        nodes["EVSPlan"]().plan(models, **CHEAP, more_settings="stable: 1")
    with pytest.raises(pack.nodes.EVSNodeError, match="more_settings holds a YAML list, not a mapping"):
        nodes["EVSPlan"]().plan(models, **CHEAP, more_settings="- 1")


def test_inside_comfyui_its_model_folders_are_searched(tmp_path, monkeypatch):
    models_dir = tmp_path / "ComfyUI" / "models"
    folders = {name: ([str(models_dir / name)], set()) for name in ("checkpoints", "loras", "diffusers", "vae")}

    def add_model_folder_path(name, path, is_default=False):
        folders.setdefault(name, ([], set()))[0].append(path)

    stub = types.SimpleNamespace(models_dir=str(models_dir), folder_names_and_paths=folders,
                                 get_folder_paths=lambda name: list(folders[name][0]),
                                 add_model_folder_path=add_model_folder_path)
    monkeypatch.setitem(sys.modules, "folder_paths", stub)
    inside = load_pack(PACK, "comfyui_evs_inside_comfyui")
    expected = [models_dir / name for name in ("evs", "diffusers", "checkpoints", "loras")] + [models_dir]
    assert inside.evs_adapter.weight_folders("") == [str(p) for p in expected]
    with pytest.raises(inside.nodes.EVSNodeError) as raised:
        inside.NODE_CLASS_MAPPINGS["EVSLoadModels"]().load("SD", "lightningSD", "cpu", "auto", 1.0, "/my/weights")
    message = str(raised.value)
    assert "weights for model 'SD'" in message
    assert message.index("/my/weights/stable-diffusion-v1-5") < message.index(str(models_dir / "evs" / "stable"))


def test_without_evs_installed_the_pack_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "evs_framework.api", None)  # what `import` finds when EVS is not installed
    with pytest.raises(ImportError, match="the EVS nodes need EVS in ComfyUI's Python: run `python -m pip install"):
        load_pack(PACK, "comfyui_evs_without_evs")


class LoadVideoStandIn:
    """VideoHelperSuite's VHS_LoadVideo as the workflows use it (its names and types); reads the file as it is."""

    @classmethod
    def INPUT_TYPES(cls):
        count = ("INT", {"default": 0, "min": 0, "max": 10**6})
        return {"required": {"video": (["toy_clip_1.mp4", "astronaut.mp4"],),
                             "force_rate": ("FLOAT", {"default": 0, "min": 0, "max": 60}),
                             "custom_width": count, "custom_height": count, "frame_load_cap": count,
                             "skip_first_frames": count,
                             "select_every_nth": ("INT", {"default": 1, "min": 1, "max": 10**6})},
                "optional": {"meta_batch": ("VHS_BatchManager",), "vae": ("VAE",),
                             "format": (["None", "AnimateDiff"], {"default": "AnimateDiff"})}}

    RETURN_TYPES = ("IMAGE", "INT", "AUDIO", "VHS_VIDEOINFO")
    FUNCTION = "load"

    def load(self, video, frame_load_cap, **ignored):
        frames = torch.from_numpy(np.stack(imageio.mimread(TOY_CLIPS / video))).float() / 255
        frames = frames[:frame_load_cap or None]
        return frames, len(frames), None, {}


class VideoCombineStandIn:
    """VideoHelperSuite's VHS_VideoCombine as the workflows use it; keeps the frames it is given."""

    received = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "frame_rate": ("FLOAT", {"default": 8, "min": 1}),
                             "loop_count": ("INT", {"default": 0, "min": 0, "max": 100}),
                             "filename_prefix": ("STRING", {"default": "AnimateDiff"}),
                             "format": (["image/gif", "image/webp", "video/h264-mp4"],),
                             "pingpong": ("BOOLEAN", {"default": False}), "save_output": ("BOOLEAN", {"default": True})},
                "optional": {"audio": ("AUDIO",), "meta_batch": ("VHS_BatchManager",), "vae": ("VAE",)}}

    RETURN_TYPES = ("VHS_FILENAMES",)
    OUTPUT_NODE = True
    FUNCTION = "combine"

    def combine(self, images, **ignored):
        self.received.append(images)
        return {"ui": {}, "result": ((True, []),)}


class PreviewAnyStandIn:
    """ComfyUI's PreviewAny ("Preview as Text"): shows any value as text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    RETURN_TYPES = ("STRING",)
    OUTPUT_NODE = True
    FUNCTION = "main"

    def main(self, source):
        return {"ui": {"text": (str(source),)}, "result": (str(source),)}


@pytest.fixture(scope="module")
def everyone(nodes):
    return {**nodes, "VHS_LoadVideo": LoadVideoStandIn, "VHS_VideoCombine": VideoCombineStandIn,
            "PreviewAny": PreviewAnyStandIn}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_an_example_workflow_holds_valid_nodes_links_and_widget_values(path, everyone, nodes):
    workflow = json.loads(path.read_text())
    by_id = {node["id"]: node for node in workflow["nodes"]}
    assert {node["type"] for node in by_id.values()} == set(everyone)  # the pack's nodes, VHS's and PreviewAny
    for node in by_id.values():
        if node["type"] in nodes:  # the saved sockets are the ones the pack declares
            node_class = nodes[node["type"]]
            assert [o["type"] for o in node["outputs"]] == list(node_class.RETURN_TYPES)
            sockets = {name: d[0] for inputs in node_class.INPUT_TYPES().values() for name, d in inputs.items()}
            assert all(sockets[socket["name"]] == socket["type"] for socket in node["inputs"])
    for link_id, source, slot, target, target_slot, kind in workflow["links"]:
        assert by_id[source]["outputs"][slot]["type"] == kind and link_id in by_id[source]["outputs"][slot]["links"]
        assert by_id[target]["inputs"][target_slot]["link"] == link_id
    assert validate_prompt(workflow_prompt(workflow, everyone), everyone) == {}


def test_the_toy_workflow_runs(everyone):
    workflow = json.loads((PACK / "workflows" / "evs_toy_enhance.json").read_text())
    prompt = workflow_prompt(workflow, everyone)
    assert validate_prompt(prompt, everyone) == {}
    VideoCombineStandIn.received.clear()
    outputs, shown = execute(prompt, everyone)
    [saved] = VideoCombineStandIn.received
    source = LoadVideoStandIn().load("toy_clip_1.mp4", 16)[0]
    assert saved.shape == source.shape == (8, 128, 128, 3) and not torch.equal(saved, source)
    [plan_node] = [node_id for node_id, node in prompt.items() if node["class_type"] == "EVSPlan"]
    [preview] = [node_id for node_id, node in prompt.items() if node["class_type"] == "PreviewAny"]
    assert shown[preview]["text"][0] == outputs[plan_node][0]
    assert "idm toyI: 12 denoising steps, 24 unet calls" in shown[preview]["text"][0]
