"""Metrics that need weights the user supplies (never downloaded): transformers ports of VBench's network metrics.

Same formula and preprocessing as VBench, our loading of the same networks in transformers' format; marked
`vbench_port` and not comparable to VBench's numbers until cross-checked on a machine that runs both.
- `subject_consistency`: DINO ViT-B/16 CLS features (shorter side resized to 224, no crop, ImageNet statistics);
- `background_consistency`: CLIP ViT-B/32 image features (bicubic to 224, centre crop, CLIP statistics);
- `aesthetic_quality`: the LAION linear head on normalised CLIP ViT-L/14 image features, frame mean / 10;
- `clip_score`: cosine of CLIP ViT-B/32 image and prompt features over 8 frames taken from the middle of 8 equal
  intervals (VBench's competitions/clip_score.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from evs_framework.loaders.checkpoints import read_state_dict
from evs_framework.hookspecs import hookimpl
from evs_framework.evaluation.metrics import ClipInfo, Metric, MetricResult
from evs_plugins.metrics_basic import consistency

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
BATCH = 32


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def normalise(pixels: torch.Tensor, statistics) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in statistics)
    return (pixels - mean) / std


def shorter_side_to(pixels: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    return F.interpolate(pixels, size=(round(height * scale), round(width * scale)), mode=mode, align_corners=False,
                         antialias=False)


def clip_pixels(frames: np.ndarray) -> torch.Tensor:
    pixels = shorter_side_to(to_tensor(frames), 224, "bicubic").clamp(0, 1)
    top, left = (pixels.shape[-2] - 224) // 2, (pixels.shape[-1] - 224) // 2
    return normalise(pixels[..., top:top + 224, left:left + 224], CLIP)


@functools.cache
def dino(path: str):
    from transformers import ViTModel

    return ViTModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True).eval()


@functools.cache
def clip(path: str):
    from transformers import CLIPModel, CLIPTokenizer

    return CLIPModel.from_pretrained(path, local_files_only=True).eval(), CLIPTokenizer.from_pretrained(path, local_files_only=True)


def projected(output) -> torch.Tensor:
    """transformers 5 returns the projected features as `pooler_output` of an output object; 4 returned a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def dino_features(path: str, frames: np.ndarray) -> torch.Tensor:
    pixels = normalise(shorter_side_to(to_tensor(frames), 224, "bilinear"), IMAGENET)
    model = dino(path)
    chunks = [model(pixel_values=part, interpolate_pos_encoding=True).last_hidden_state[:, 0] for part in pixels.split(BATCH)]
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def clip_image_features(path: str, frames: np.ndarray) -> torch.Tensor:
    model, _ = clip(path)
    chunks = [projected(model.get_image_features(pixel_values=part)) for part in clip_pixels(frames).split(BATCH)]
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def clip_text_features(path: str, prompt: str) -> torch.Tensor:
    model, tokenizer = clip(path)
    tokens = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return F.normalize(projected(model.get_text_features(input_ids=tokens.input_ids)), dim=-1)[0]


def middle_frames(count: int, picks: int = 8) -> list[int]:
    """The middle frame of each of `picks` equal intervals (VBench's get_frame_indices, sample='middle')."""
    edges = np.linspace(0, count, num=min(picks, count) + 1).astype(int)
    return [(start + end - 1) // 2 for start, end in zip(edges[:-1], edges[1:])]


@functools.cache
def aesthetic_head(path: str) -> torch.nn.Linear:
    state = read_state_dict(path, allow_pickle=True, what="LAION aesthetic head")  # a state dict of one Linear
    head = torch.nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head.eval()


def metrics_for(weights: dict) -> list[Metric]:
    made = []
    if "dino_vitb16" in weights:
        path = str(weights["dino_vitb16"])
        made.append(Metric("subject_consistency", "vbench_port",
                           lambda frames, info: consistency(dino_features(path, frames).numpy()),
                           aggregate="frame_weighted", description="DINO ViT-B/16 (transformers port), VBench's rule"))
    if "clip_vit_b32" in weights:
        path = str(weights["clip_vit_b32"])
        made.append(Metric("background_consistency", "vbench_port",
                           lambda frames, info: consistency(clip_image_features(path, frames).numpy()),
                           aggregate="frame_weighted", description="CLIP ViT-B/32 (transformers port), VBench's rule"))
        made.append(Metric("clip_score", "vbench_port", functools.partial(clip_score, path),
                           description="cosine of CLIP ViT-B/32 frame and prompt features, 8 middle frames"))
    if "clip_vit_l14" in weights and "laion_aesthetic_head" in weights:
        made.append(Metric("aesthetic_quality", "vbench_port",
                           functools.partial(aesthetic, str(weights["clip_vit_l14"]), str(weights["laion_aesthetic_head"])),
                           description="LAION head on CLIP ViT-L/14 (transformers port), frame mean / 10"))
    return made


@torch.no_grad()
def aesthetic(clip_path: str, head_path: str, frames: np.ndarray, info: ClipInfo) -> MetricResult:
    scores = aesthetic_head(head_path)(clip_image_features(clip_path, frames)).squeeze(-1) / 10.0
    return MetricResult(float(scores.mean()), tuple(map(float, scores)))


def clip_score(path: str, frames: np.ndarray, info: ClipInfo) -> MetricResult:
    if not info.prompt:
        return MetricResult(float("nan"))
    images = clip_image_features(path, frames[middle_frames(len(frames))])
    return MetricResult(float((images @ clip_text_features(path, info.prompt)).mean()))


@hookimpl
def register_weighted_metrics(register, weights):
    for metric in metrics_for(weights):
        register(metric.name, metric)
