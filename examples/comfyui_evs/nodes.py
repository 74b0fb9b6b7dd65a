"""The EVS nodes: load a T2I and a T2V model by their EVS registry names, compose a clip with them, show the plan.

Each node declares itself as ComfyUI reads a node class: INPUT_TYPES (widgets with their ranges and tooltips, and
sockets), RETURN_TYPES, FUNCTION, CATEGORY. The models travel between nodes as the custom type EVS_MODELS.
"""

from __future__ import annotations

import yaml

from .evs_adapter import (AUTO, DTYPE_CHOICES, EVSNodeError, compose, composition_names, default_settings,
                          device_choices, load_models, model_names, plan_text)

CATEGORY = "EVS"
MODELS = "EVS_MODELS"
STRENGTH = {"min": 0.01, "max": 1.0, "step": 0.01}


def _preferred(name: str, choices: list[str]) -> str:
    return name if name in choices else choices[0]


class EVSLoadModels:
    DESCRIPTION = ("Loads a T2I model (idm) and a T2V model (vdm) by their names in EVS's registry (`evs models` lists "
                   "them; toyI and toyV ship with EVS and run on a CPU). Weights load once and stay loaded while the "
                   "node's inputs stay the same.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODELS,)
    RETURN_NAMES = ("models",)
    OUTPUT_TOOLTIPS = ("The two loaded models, for EVS Compose Video and EVS Plan.",)

    @classmethod
    def INPUT_TYPES(cls):
        t2i, t2v = model_names("t2i"), model_names("t2v")
        return {
            "required": {
                "idm": (t2i, {"default": _preferred("EP", t2i),
                              "tooltip": "The T2I model: sharp frames, composed frame by frame."}),
                "vdm": (t2v, {"default": _preferred("lightningEP", t2v),
                              "tooltip": "The T2V model: consistent motion across the frames."}),
                "device": (device_choices(), {"default": AUTO,
                                              "tooltip": "auto: the first GPU when there is one, else the CPU."}),
                "dtype": (list(DTYPE_CHOICES), {"default": AUTO,
                                                "tooltip": "The models' precision; auto: float16 on a GPU, float32 "
                                                           "on a CPU. The VAE keeps its own (float32 on a CPU)."}),
                "idm_upscale": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 4.0, "step": 0.5,
                                          "tooltip": "Resize the latents by this factor when the T2I model first "
                                                     "runs (the paper's enhance task: 2.0)."}),
            },
            "optional": {
                "weights_dir": ("STRING", {"default": "",
                                           "tooltip": "A folder laid out as EVS's pretrained_models/, searched "
                                                      "first; then ComfyUI's models/evs, its diffusers, checkpoints, "
                                                      "loras and animatediff_models folders, and models/."}),
            },
        }

    def load(self, idm, vdm, device, dtype, idm_upscale, weights_dir=""):
        return (load_models(idm, vdm, device, dtype, idm_upscale, weights_dir),)


def composition_inputs() -> dict:
    """The composition and its main settings, as EVS Compose Video and EVS Plan both take them."""
    defaults = default_settings()
    return {
        "composition": (composition_names(), {"default": "IDM_VDM_IDM",
                                              "tooltip": "How the two models share the trajectory: IDM_VDM_IDM is "
                                                         "EVS; IDM and VDM one model alone; basic, IV_mixed and "
                                                         "videoelevator baselines."}),
        "idm_inverse_strength": ("FLOAT", {"default": defaults["idm_inverse_strength"], **STRENGTH,
                                           "tooltip": "How far the T2I model noises the clip: the fraction of its "
                                                      "schedule it runs (img2img strength)."}),
        "vdm_inverse_strength": ("FLOAT", {"default": defaults["vdm_inverse_strength"], **STRENGTH,
                                           "tooltip": "Where the T2V window starts: a fraction of the T2V model's "
                                                      "own schedule."}),
        "stable_steps": ("INT", {"default": defaults["stable_steps"][0], "min": 0, "max": 1000,
                                 "tooltip": "T2I steps left when the T2V window runs; fewer than the T2I model's "
                                            "steps x idm_inverse_strength."}),
        "stable_num": ("INT", {"default": defaults["stable_num"], "min": 1, "max": 1000,
                               "tooltip": "T2V steps in the window."}),
    }


MORE_SETTINGS = ("STRING", {"default": "", "multiline": True,
                            "tooltip": "Other composition settings as YAML; they replace the values above, e.g. "
                                       "`stable_steps: [8, 4]` (two T2V windows) or `idm_invert_mode_2: ddim`."})


def composition_settings(idm_inverse_strength, vdm_inverse_strength, stable_steps, stable_num, more_settings):
    """The settings EVS reads, from the widgets and the YAML of more_settings."""
    settings = {"idm_inverse_strength": idm_inverse_strength, "vdm_inverse_strength": vdm_inverse_strength,
                "stable_steps": [stable_steps], "stable_num": stable_num}
    try:
        more = yaml.safe_load(more_settings) if more_settings.strip() else {}
    except yaml.YAMLError as exc:
        raise EVSNodeError(f"more_settings is not YAML ({exc}); write `name: value` lines") from None
    if not isinstance(more, dict):
        raise EVSNodeError(f"more_settings holds a YAML {type(more).__name__}, not a mapping; write `name: value` "
                           f"lines")
    return {**settings, **more}


class EVSComposeVideo:
    DESCRIPTION = ("Enhances or edits a clip by composing the T2I and T2V models in one denoising trajectory (EVS, "
                   "CVPR 2025). Frames in and out as IMAGE batches, one image per frame (VideoHelperSuite's "
                   "Load Video and Video Combine); sides are cropped to multiples of 8.")
    CATEGORY = CATEGORY
    FUNCTION = "compose"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("frames", "plan")
    OUTPUT_TOOLTIPS = ("The composed frames, as many as came in.",
                       "The plan that ran, as EVS Plan shows it, with each call counted for this clip's length.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "models": (MODELS, {"tooltip": "From EVS Load Models."}),
                "frames": ("IMAGE", {"tooltip": "The clip: one image per frame."}),
                "prompt": ("STRING", {"default": "", "multiline": True, "tooltip": "What the clip shows."}),
                **composition_inputs(),
                "seed": ("INT", {"default": 23, "min": 0, "max": 2**64 - 1,
                                 "tooltip": "The noise's seed; the same seed and inputs give the same frames."}),
            },
            "optional": {
                "negative_prompt": ("STRING", {"default": "", "multiline": True,
                                               "tooltip": "What guidance steers away from; empty: each model's "
                                                          "registry preset's."}),
                "more_settings": MORE_SETTINGS,
            },
        }

    def compose(self, models, frames, prompt, composition, idm_inverse_strength, vdm_inverse_strength, stable_steps,
                stable_num, seed, negative_prompt="", more_settings=""):
        settings = composition_settings(idm_inverse_strength, vdm_inverse_strength, stable_steps, stable_num,
                                        more_settings)
        return compose(models, frames, prompt, negative_prompt, seed, composition, settings)


class EVSPlan:
    DESCRIPTION = ("The schedule EVS Compose Video would run with these settings, as `evs plan` prints it: each op, "
                   "its noise levels and its UNet calls. Runs no model.")
    CATEGORY = CATEGORY
    FUNCTION = "plan"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("plan",)
    OUTPUT_TOOLTIPS = ("The plan as text.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"models": (MODELS, {"tooltip": "From EVS Load Models."}), **composition_inputs()},
            "optional": {"more_settings": MORE_SETTINGS},
        }

    def plan(self, models, composition, idm_inverse_strength, vdm_inverse_strength, stable_steps, stable_num,
             more_settings=""):
        settings = composition_settings(idm_inverse_strength, vdm_inverse_strength, stable_steps, stable_num,
                                        more_settings)
        text = plan_text(models, composition, settings)
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"EVSLoadModels": EVSLoadModels, "EVSComposeVideo": EVSComposeVideo, "EVSPlan": EVSPlan}
NODE_DISPLAY_NAME_MAPPINGS = {"EVSLoadModels": "EVS Load Models", "EVSComposeVideo": "EVS Compose Video",
                              "EVSPlan": "EVS Plan"}
