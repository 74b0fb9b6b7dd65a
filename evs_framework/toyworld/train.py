"""Train the toy world's models from a seed and export them in the formats EVS loads.

The shipped models were made in two device calls (the schedules follow time; training.json has each stage's record
and the card it ran on). The first trained four VAE variants side by side (bench/toyworld_vae_variants.py) and the
T2I on the one chosen; the second ran the decoder, t2v, vc and style stages side by side on one GPU:

    python bench/toyworld_vae_variants.py --work DIR --minutes 4 --out variants.jsonl --variant "--seed 0" \
        --variant "--seed 0 --border-weight 4" --variant "--seed 1 --border-weight 4" \
        --variant "--seed 0 --border-weight 4 --shape-weight 4"
    python -m evs_framework.toyworld.train --stage t2i --work DIR --steps 100000 --max-minutes 3.9
    python -m evs_framework.toyworld.train --stage decoder --work DIR --steps 100000 --max-minutes 5.5 --border-weight 4 &
    python -m evs_framework.toyworld.train --stage t2v --work DIR --steps 100000 --max-minutes 5.5 &
    python -m evs_framework.toyworld.train --stage vc --work DIR --steps 100000 --max-minutes 5.5 &
    python -m evs_framework.toyworld.train --stage style --work DIR --steps 100000 --max-minutes 4.5 &
    wait; python -m evs_framework.toyworld.train --stage eval export --work DIR

(each with --log-every 100 --save-every 0). Every loss was still falling when its time ran out.

Stages, each reading the products of the ones before it from DIR:
- vae: an AutoencoderKL on single frames with varied textures, a quarter of them in the watercolor style (L1 + L2,
  weighted up inside the shape and, with --border-weight, near the frame's edges, + a small KL); its scaling factor
  is then measured as 1 / std of training latents. Product: DIR/vae/. It records held-out PSNR and how much more it
  gets wrong in the brightest corner than in the others (quality.brightest_corner_error_ratio): the VAE shipped
  before issue 22 drew a ring there (ratio 4.2), which a decoder-only retrain could not remove (4.16-4.32), so its
  encoder carried it; the pixel loss weighted 4x near the edges brought a new VAE's ratio to 1.5. The stages also
  record quality.background_ghost_error, the ghost dots a decoder draws on plain backgrounds.
- decoder: the VAE's decoder trained on from DIR/vae, its encoder frozen, so that the latents (and every UNet learnt
  on them) stay as they are. Product: DIR/vae/, replaced.
- t2i: a text-conditioned UNet on single frames' latents (SD1.5's scaled_linear betas, epsilon prediction, the
  prompt dropped to "" 10% of the time for guidance), under a frozen text encoder left at its seeded random
  initialisation (DIR/text_encoder/, DIR/tokenizer/, made once). It sees no watercolor frame. Product: DIR/unet/
  (EMA weights).
- t2v, vc: a video model over the frozen T2I: a MotionAdapter and a spatial LoRA of the UNet learnt together
  (AnimateLCM's layout), assembled as runs assemble it (motion_unet_over), on 16-frame clips' latents with
  AnimateDiff's linear betas. What each learns from is VIDEO_DATA's: the T2V (the AnimateDiff analogue) from clips
  softened 4x whose shapes move at half the speed their prompts say, so that it is consistent but draws softer
  frames and damps motion; vc (the VideoCrafter-2 analogue that makes enhance inputs) from clips at full speed with
  per-frame flicker and jitter, softened 2x. --soften, --speed-scale and --lora-rank override them. Products:
  DIR/<stage>_motion_adapter.safetensors, DIR/<stage>_spatial_lora.safetensors (EMA weights).
- style: a rank-8 LoRA of the frozen T2I learnt on watercolor frames only. Product: DIR/watercolor_lora.safetensors.
- eval: quality numbers and pictures (quality.py) into DIR/eval.json and DIR/*.png.
- export: the float16 files into the package (evs_framework/data/weights/toyworld) with training.json.

Data is drawn on the fly from the world (seeds below HELD_OUT_FIRST_SEED) and rendered on the training device.
A training stage saves DIR/<stage>.ckpt.pt (weights, EMA, optimizer, generators) every --save-every steps and at
its end, and resumes from it when present; it writes a JSON line of progress every --log-every steps and its
summary (losses, wall time, parameters) to DIR/<stage>.json, which export gathers into training.json. On CUDA it
runs under bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import attrs
import torch

from evs_framework.toyworld import models, quality
from evs_framework.toyworld.lora_training import add_lora, save_lora
from evs_framework.toyworld.world import (DIRECTIONS, FRAMES, HELD_OUT_FIRST_SEED, ClipSpec, degrade, render,
                                          render_with_masks, sample_spec, soften)

STAGES = ("vae", "decoder", "t2i", "t2v", "vc", "style", "eval", "export")
TRAINING_STAGES = {"vae": 0, "t2i": 1, "t2v": 2, "decoder": 4, "vc": 5, "style": 6}  # stage -> stream of its generators
OPTIONAL_STAGES = ("decoder",)  # export records it when it was run
DEFAULT_BATCH = {"vae": 32, "t2i": 256, "t2v": 16, "decoder": 32, "vc": 16, "style": 128}  # frames; t2v, vc: clips
DEFAULT_LR = {"vae": 1e-3, "t2i": 3e-4, "t2v": 3e-4, "decoder": 2e-4, "vc": 3e-4, "style": 3e-4}
KL_WEIGHT = 1e-5  # times the KL per latent element, beside L1 + L2 per pixel
SHAPE_WEIGHT = 8.0  # the VAE's pixel loss inside the shape, against 1 on the background: without it the
# background, most of every frame, is learnt first and textures come back as flat colour
VAE_WATERCOLOR_SHARE = 0.25  # of the VAE's frames drawn in the watercolor style, which the style LoRA draws
PROMPT_DROPOUT = 0.1
STYLE_RANK = 8  # the watercolor LoRA's rank
STYLE_LORA = "watercolor_lora.safetensors"
EMA_DECAY = 0.999
BETAS = dict(beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


@attrs.frozen
class VideoData:
    """How a video model's training clips are made from the world's, and the rank of its own spatial LoRA."""

    soften: int = 1  # down-up sampling factor (1: as rendered)
    speed_scale: float = 1.0  # shapes move this share of the speed their prompts say
    flicker: float = 0.0  # std of each frame's per-channel gain
    jitter: int = 0  # each frame shifted by up to this many pixels
    lora_rank: int = 16


VIDEO_DATA = {
    # the AnimateDiff / AnimateLCM analogue: consistent, but learnt from softer, slower video than the T2I
    "t2v": VideoData(soften=4, speed_scale=0.5, lora_rank=32),
    # the VideoCrafter-2 analogue that makes enhance inputs: full motion, but flicker, jitter and middling detail
    "vc": VideoData(soften=2, flicker=0.08, jitter=2, lora_rank=16),
}


@attrs.frozen
class Settings:
    work: Path
    seed: int
    steps: int
    batch: int | None
    lr: float | None
    device: torch.device
    log_every: int | None
    save_every: int
    max_minutes: float | None
    measure: int
    reuse: int
    eval_prompts: int
    video_overrides: dict = attrs.field(factory=dict)  # t2v, vc: VideoData fields set on the command line
    shape_weight: float = SHAPE_WEIGHT  # vae, decoder: the pixel loss's weight inside the shape
    border_weight: float = 1.0  # vae, decoder: the pixel loss's weight within BORDER pixels of the frame's edges

    def video(self, stage: str) -> "VideoData":
        return attrs.evolve(VIDEO_DATA[stage], **self.video_overrides)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class WorldData:
    """Training draws from the world: clip seeds and frame choices from a CPU generator, noise on the device."""

    def __init__(self, seed: int, stream: int, device: torch.device, varied_textures: bool = False,
                 watercolor_share: float = 0.0):
        self.device, self.varied_textures, self.watercolor_share = device, varied_textures, watercolor_share
        self.cpu = torch.Generator().manual_seed(seed * 1000 + stream)
        self.noise = torch.Generator(device=device).manual_seed(seed * 1000 + stream + 500)

    def specs(self, count: int) -> list[ClipSpec]:
        seeds = torch.randint(HELD_OUT_FIRST_SEED, (count,), generator=self.cpu).tolist()
        styled = (torch.rand(count, generator=self.cpu) < self.watercolor_share).tolist()
        return [attrs.evolve(sample_spec(seed, varied_textures=self.varied_textures), style="watercolor" if s else "")
                for seed, s in zip(seeds, styled)]

    def frames(self, count: int) -> tuple[torch.Tensor, list[str]]:
        """(count, 3, H, W): one random frame of each of `count` clips, with the clips' prompts."""
        frames, _, prompts = self.frames_with_masks(count)
        return frames, prompts

    def frames_with_masks(self, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """The frames, where their shapes are ((count, H, W) in [0, 1]) and the prompts."""
        specs = self.specs(count)
        times = torch.randint(FRAMES, (count,), generator=self.cpu).tolist()
        frames, masks = render_with_masks([frame_spec(s, t) for s, t in zip(specs, times)], frames=1,
                                          device=self.device)
        return frames[:, 0], masks[:, 0], [s.prompt for s in specs]

    def clips(self, count: int) -> tuple[torch.Tensor, list[str]]:
        specs = self.specs(count)
        return render(specs, device=self.device), [s.prompt for s in specs]

    def dropped(self, prompts: list[str]) -> list[str]:
        keep = torch.rand(len(prompts), generator=self.cpu) >= PROMPT_DROPOUT
        return [p if k else "" for p, k in zip(prompts, keep.tolist())]

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.noise, device=self.device)

    def timesteps(self, count: int) -> torch.Tensor:
        return torch.randint(BETAS["num_train_timesteps"], (count,), generator=self.noise, device=self.device)

    def state(self) -> dict:
        return {"cpu": self.cpu.get_state(), "noise": self.noise.get_state()}

    def restore(self, state: dict) -> None:
        self.cpu.set_state(state["cpu"].cpu())
        self.noise.set_state(state["noise"].cpu())


class LatentPool:
    """Recently encoded latents (frames or clips) with their prompts, each step's batch drawn from them at random.

    Each step encodes only batch / reuse new items (a whole batch at the start) into a ring of 32 batches and
    samples the batch from it. Meant to take the VAE encoder's cost off the UNet's steps; on an H200 it did not
    speed them up (about 8 steps/s at batch 256 with reuse 1 and 4 alike), but the shipped models were trained
    with reuse 4, the default. The pool is not part of the checkpoint: a resumed stage refills it."""

    def __init__(self, batch: int, reuse: int):
        self.batch, self.fresh, self.capacity = batch, max(1, batch // max(1, reuse)), 32 * batch
        self.latents, self.prompts, self.next = None, [], 0

    def draw(self, data: "WorldData", make) -> tuple[torch.Tensor, list[str]]:
        """`make(count)` -> (latents, prompts) of new items; returns a batch sampled from the pool."""
        latents, prompts = make(self.batch if not self.prompts else self.fresh)
        if self.latents is None:
            self.latents = latents.new_empty((self.capacity, *latents.shape[1:]))
        for start in range(0, len(prompts), self.capacity):
            self._add(latents[start:start + self.capacity], prompts[start:start + self.capacity])
        picks = torch.randint(len(self.prompts), (self.batch,), generator=data.cpu)
        return self.latents[picks.to(self.latents.device)], [self.prompts[i] for i in picks.tolist()]

    def _add(self, latents: torch.Tensor, prompts: list[str]) -> None:
        slots = [(self.next + i) % self.capacity for i in range(len(prompts))]
        self.latents[torch.tensor(slots, device=self.latents.device)] = latents.to(self.latents.dtype)
        for slot, prompt in zip(slots, prompts):
            if slot < len(self.prompts):
                self.prompts[slot] = prompt
            else:
                self.prompts.append(prompt)
        self.next = (self.next + len(prompts)) % self.capacity


def frame_spec(spec: ClipSpec, t: int) -> ClipSpec:
    """The spec whose frame 0 is frame t of `spec` (the shape, and its texture with it, has moved on)."""
    dx, dy = DIRECTIONS[spec.direction]
    return attrs.evolve(spec, start=(spec.start[0] + dx * spec.speed * t, spec.start[1] + dy * spec.speed * t))


class TextEmbeddings:
    """The frozen text encoder's embeddings, computed once per distinct prompt (the world has a few hundred)."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder, self.cache = tokenizer, text_encoder, {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted(set(prompts) - self.cache.keys())
        if missing:
            # as the runtime encodes (evs_plugins.sd15.encode_prompts): padded to 77 tokens, no attention mask
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            hidden = self.text_encoder(ids.to(self.text_encoder.device))[0].float()
            self.cache.update(zip(missing, hidden))
        return torch.stack([self.cache[p] for p in prompts])


def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (x0.dim() - 1)
    a = alphas_cumprod[t].view(shape)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def alphas_cumprod(beta_schedule: str, device) -> torch.Tensor:
    from evs_framework.schedules import BetaSchedule

    return BetaSchedule(beta_schedule).alphas_cumprod.float().to(device)


# ---- the training loop shared by the stages ------------------------------------------------------------------

def train(stage: str, settings: Settings, model: torch.nn.Module, loss_of, data: WorldData, use_ema: bool) -> dict:
    """Run `loss_of(data)` steps on `model`'s trainable parameters up to settings.steps, resuming from the stage's
    checkpoint; leaves the EMA weights (or the plain ones) in `model`. Returns the stage's summary."""
    batch = settings.batch or DEFAULT_BATCH[stage]
    base_lr = settings.lr or DEFAULT_LR[stage]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params] if use_ema else None
    checkpoint = settings.work / f"{stage}.ckpt.pt"
    start, losses, wall = 0, [], 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=settings.device, weights_only=False)
        if (state["seed"], state["batch"]) != (settings.seed, batch):
            raise SystemExit(f"{checkpoint} was made with seed {state['seed']} and batch {state['batch']}, not "
                             f"{settings.seed} and {batch}; pass those, or delete it to start the stage over")
        unexpected = model.load_state_dict(state["model"], strict=False).unexpected_keys
        if unexpected:
            raise SystemExit(f"{checkpoint} does not fit this stage's model (keys {unexpected[:3]}); delete it")
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            for e, saved in zip(ema, state["ema"]):
                e.copy_(saved)
        data.restore(state["data"])
        start, losses, wall = state["step"], state["losses"], state["wall_s"]
        emit({"stage": stage, "resumed_at": start})

    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}

    def save(step: int, elapsed: float) -> None:
        trainable = {k: v for k, v in model.state_dict().items() if k in trainable_names}
        torch.save({"step": step, "seed": settings.seed, "batch": batch, "model": trainable,
                    "optimizer": optimizer.state_dict(), "ema": ema, "data": data.state(), "losses": losses,
                    "wall_s": wall + elapsed}, checkpoint.with_suffix(".tmp"))
        checkpoint.with_suffix(".tmp").replace(checkpoint)

    log_every = settings.log_every or max(1, settings.steps // 40)
    warmup = max(1, min(200, settings.steps // 10))
    began = time.perf_counter()
    window, window_start, done = [], began, start
    model.train()
    while done < settings.steps:
        progress = done / settings.steps
        if settings.max_minutes:  # the schedule follows whichever is further along, steps or time
            progress = max(progress, (time.perf_counter() - began) / (60 * settings.max_minutes))
        lr = base_lr * min(1.0, (done + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with settings.autocast():
            loss = loss_of(data, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            decay = min(EMA_DECAY, (1 + done) / (10 + done))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        window.append(loss.detach())
        done += 1
        if done % log_every == 0 or done == settings.steps:
            now = time.perf_counter()
            mean = float(torch.stack(window).float().mean())
            losses.append([done, round(mean, 6)])
            emit({"stage": stage, "step": done, "loss": round(mean, 6), "lr": round(lr, 7),
                  "steps_per_s": round(len(window) / (now - window_start), 2), "elapsed_s": round(now - began, 1)})
            window, window_start = [], now
        if settings.save_every and done % settings.save_every == 0:
            save(done, time.perf_counter() - began)
        if settings.max_minutes and time.perf_counter() - began >= 60 * settings.max_minutes:
            emit({"stage": stage, "stopped_early_at": done, "reason": "--max-minutes"})
            break
    elapsed = time.perf_counter() - began
    save(done, elapsed)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    model.eval()
    return {"stage": stage, "steps": done, "batch": batch, "lr": base_lr, "seed": settings.seed,
            "losses": losses, "wall_s": round(wall + elapsed, 1), "device": device_name(settings.device),
            "ema_decay": EMA_DECAY if use_ema else None,
            "trainable_parameters": sum(p.numel() for p in params)}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def write_summary(settings: Settings, stage: str, summary: dict) -> None:
    (settings.work / f"{stage}.json").write_text(json.dumps(summary, indent=1) + "\n")
    emit({k: v for k, v in summary.items() if k != "losses"})


# ---- products ------------------------------------------------------------------------------------------------

def load_vae(settings: Settings):
    from diffusers import AutoencoderKL

    folder = settings.work / "vae"
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: run --stage vae first")
    return AutoencoderKL.from_pretrained(folder).to(settings.device).eval().requires_grad_(False)


def load_unet(settings: Settings):
    from diffusers import UNet2DConditionModel

    folder = settings.work / "unet"
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: run --stage t2i first")
    return UNet2DConditionModel.from_pretrained(folder).to(settings.device).eval().requires_grad_(False)


def load_adapter(settings: Settings, stage: str):
    from evs_framework.loaders.motion_adapter import load_motion_adapter

    file = settings.work / f"{stage}_motion_adapter.safetensors"
    if not file.is_file():
        raise SystemExit(f"{file} is missing: run --stage {stage} first")
    return load_motion_adapter(file, torch.float32).to(settings.device).requires_grad_(False)


def load_video_unet(settings: Settings, stage: str):
    """The motion UNet of the video model `stage`: its adapter over a copy of the T2I with its spatial LoRA fused,
    read through the runtime's own LoRA loader."""
    from evs_framework.loaders.lora import fuse_lora, read_lora
    from evs_plugins.animatediff import motion_unet_over

    unet = load_unet(settings)
    fuse_lora(read_lora(settings.work / f"{stage}_spatial_lora.safetensors", unet), unet)
    return motion_unet_over(unet, load_adapter(settings, stage))


def text_model(settings: Settings):
    """The tokenizer and frozen text encoder, made from the seed the first time and read back after that."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer_dir, encoder_dir = settings.work / "tokenizer", settings.work / "text_encoder"
    if not encoder_dir.is_dir():
        tokenizer = models.save_tokenizer(tokenizer_dir)
        torch.manual_seed(settings.seed + 3)
        models.make_text_encoder(tokenizer).save_pretrained(encoder_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    encoder = CLIPTextModel.from_pretrained(encoder_dir).to(settings.device).eval().requires_grad_(False)
    return tokenizer, encoder


@torch.no_grad()
def encode(vae, frames: torch.Tensor) -> torch.Tensor:
    return vae.encode(frames).latent_dist.mode() * vae.config.scaling_factor


@torch.no_grad()
def reconstruct(vae, specs: list[ClipSpec], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clips' frames (N, 3, H, W), their VAE reconstructions through the mode latents, in float32, and where
    their shapes are (N, H, W)."""
    frames, masks = render_with_masks(specs, device=device)
    frames, masks = frames.flatten(0, 1), masks.flatten(0, 1)
    recon = torch.cat([vae.decode(vae.encode(part).latent_dist.mode()).sample for part in frames.split(32)])
    return frames, recon, masks


def reconstruction_measures(frames: torch.Tensor, recon: torch.Tensor, masks: torch.Tensor) -> dict:
    ratio = quality.brightest_corner_error_ratio(frames, recon, masks)
    return {"held_out_psnr_db": round(quality.psnr(frames, recon), 2),
            "held_out_brightest_corner_error_ratio": None if ratio is None else round(ratio, 2),
            "held_out_background_ghost_error": round(quality.background_ghost_error(frames, recon, masks), 4)}


def held_out_specs(count: int, offset: int = 0, varied_textures: bool = False) -> list[ClipSpec]:
    return [sample_spec(HELD_OUT_FIRST_SEED + offset + i, varied_textures=varied_textures) for i in range(count)]


# ---- stages ----------------------------------------------------------------------------------------------------

BORDER = 16  # pixels: two latent cells, where the zero padding of the VAE's convolutions is felt


def _border(frames: torch.Tensor) -> torch.Tensor:
    """1 within BORDER pixels of the frames' edges, else 0: (1, 1, H, W)."""
    height, width = frames.shape[-2:]
    rows, cols = torch.arange(height, device=frames.device), torch.arange(width, device=frames.device)
    near_rows = (rows < BORDER) | (rows >= height - BORDER)
    near_cols = (cols < BORDER) | (cols >= width - BORDER)
    return (near_rows[:, None] | near_cols[None, :]).float()[None, None]


def vae_loss(vae, data: WorldData, batch: int, shape_weight: float = SHAPE_WEIGHT, border_weight: float = 1.0) -> torch.Tensor:
    frames, masks, _ = data.frames_with_masks(batch)
    posterior = vae.encode(frames).latent_dist
    mean, logvar = posterior.mean.float(), posterior.logvar.float()
    latents = mean + (0.5 * logvar).exp() * data.randn(mean.shape)
    error = vae.decode(latents).sample.float() - frames
    weight = (1 + (shape_weight - 1) * masks[:, None]) * (1 + (border_weight - 1) * _border(frames))
    weight = weight / weight.mean()
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
    return (weight * (error.abs() + error**2)).mean() + KL_WEIGHT * kl


def stage_vae(settings: Settings) -> None:
    torch.manual_seed(settings.seed + 1)
    vae = models.make_vae().to(settings.device)
    data = WorldData(settings.seed, TRAINING_STAGES["vae"], settings.device, varied_textures=True,
                     watercolor_share=VAE_WATERCOLOR_SHARE)
    summary = train("vae", settings, vae, lambda data, batch: vae_loss(vae, data, batch, settings.shape_weight, settings.border_weight), data,
                    use_ema=False)
    with torch.no_grad():
        # the scaling factor: 1 / std of latents of training frames (a fixed draw, apart from the training stream)
        draw = WorldData(settings.seed, 10, settings.device, varied_textures=True)
        latents = torch.cat([vae.encode(draw.frames(32)[0]).latent_dist.mode() for _ in range(-(-settings.measure // 32))])
        std, mean = float(latents.std()), float(latents.mean())
        vae.register_to_config(scaling_factor=1.0 / std)
        clips, recon, masks = reconstruct(vae, held_out_specs(max(1, settings.measure // 32), varied_textures=True),
                                          settings.device)
    quality.save_grid(torch.stack([clips[::FRAMES][:8], recon[::FRAMES][:8]]), settings.work / "vae_reconstructions.png")
    vae.save_pretrained(settings.work / "vae")
    summary.update(scaling_factor=1.0 / std, latent_std=std, latent_mean=mean, latent_frames=len(latents),
                   **reconstruction_measures(clips, recon, masks), parameters=models.parameter_count(vae))
    write_summary(settings, "vae", summary)


def stage_decoder(settings: Settings) -> None:
    vae = load_vae(settings)
    specs = held_out_specs(max(1, settings.measure // 32), varied_textures=True)
    before = reconstruction_measures(*reconstruct(vae, specs, settings.device))
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    data = WorldData(settings.seed, TRAINING_STAGES["decoder"], settings.device, varied_textures=True,
                     watercolor_share=VAE_WATERCOLOR_SHARE)
    summary = train("decoder", settings, vae, lambda data, batch: vae_loss(vae, data, batch, settings.shape_weight, settings.border_weight), data,
                    use_ema=False)
    with torch.no_grad():
        clips, recon, masks = reconstruct(vae, specs, settings.device)
    vae.save_pretrained(settings.work / "vae")
    summary.update(**reconstruction_measures(clips, recon, masks), before=before, shape_weight=settings.shape_weight,
                   border_weight=settings.border_weight,
                   parameters=models.parameter_count(vae))
    write_summary(settings, "decoder", summary)


def frame_denoising_loss(settings: Settings, stage: str, unet, data: WorldData):
    """The epsilon loss of `unet` on single frames' latents drawn from `data` (a pool of them, reused), under the
    frozen text encoder with the prompt dropped now and then, for guidance; returns (loss_of, pool)."""
    vae = load_vae(settings)
    tokenizer, encoder = text_model(settings)
    embed = TextEmbeddings(tokenizer, encoder)
    ac = alphas_cumprod("scaled_linear", settings.device)
    pool = LatentPool(settings.batch or DEFAULT_BATCH[stage], settings.reuse)

    def new_latents(count: int) -> tuple[torch.Tensor, list[str]]:
        frames, prompts = data.frames(count)
        return encode(vae, frames).float(), prompts

    def loss_of(data: WorldData, batch: int) -> torch.Tensor:
        x0, prompts = pool.draw(data, new_latents)
        noise, t = data.randn(x0.shape), data.timesteps(batch)
        eps = unet(noised(x0, noise, t, ac), t, encoder_hidden_states=embed(data.dropped(prompts))).sample
        return torch.nn.functional.mse_loss(eps.float(), noise)

    return loss_of, pool


def stage_t2i(settings: Settings) -> None:
    torch.manual_seed(settings.seed + 2)
    unet = models.make_unet().to(settings.device)
    data = WorldData(settings.seed, TRAINING_STAGES["t2i"], settings.device)
    loss_of, pool = frame_denoising_loss(settings, "t2i", unet, data)
    summary = train("t2i", settings, unet, loss_of, data, use_ema=True)
    unet.save_pretrained(settings.work / "unet")
    summary.update(parameters=models.parameter_count(unet), beta_schedule="scaled_linear", prediction="epsilon",
                   reuse=settings.reuse, pool=pool.capacity, prompt_dropout=PROMPT_DROPOUT,
                   text_encoder_parameters=models.parameter_count(text_model(settings)[1]))
    write_summary(settings, "t2i", summary)


def stage_style(settings: Settings) -> None:
    """The watercolor LoRA: a low-rank adapter of the frozen T2I learnt on watercolor frames only, as style LoRAs are
    learnt over SD1.5. Product: DIR/watercolor_lora.safetensors."""
    unet = load_unet(settings)
    torch.manual_seed(settings.seed + 6)
    lora = add_lora(unet, STYLE_RANK)
    data = WorldData(settings.seed, TRAINING_STAGES["style"], settings.device, watercolor_share=1.0)
    loss_of, pool = frame_denoising_loss(settings, "style", unet, data)
    summary = train("style", settings, lora, loss_of, data, use_ema=True)
    save_lora(lora, settings.work / STYLE_LORA)
    summary.update(rank=STYLE_RANK, lora_parameters=models.parameter_count(lora), reuse=settings.reuse,
                   pool=pool.capacity, prompt_dropout=PROMPT_DROPOUT)
    write_summary(settings, "style", summary)


def video_clips(data: WorldData, video: VideoData, count: int) -> tuple[torch.Tensor, list[str]]:
    """`count` clips (B, T, 3, H, W) made as `video` says from the world's, with the prompts of the clips as drawn
    (a damped clip keeps the speed word of the speed it was drawn with)."""
    specs = data.specs(count)
    moved = [attrs.evolve(spec, speed=spec.speed * video.speed_scale) for spec in specs]
    clips = render(moved, device=data.device)
    if video.flicker or video.jitter:
        seed = int(torch.randint(2**31, (), generator=data.cpu))
        clips = degrade(clips, seed, scale=video.soften, flicker=video.flicker, jitter=video.jitter, noise=0.0)
    elif video.soften > 1:
        clips = soften(clips, video.soften)
    return clips, [spec.prompt for spec in specs]


def stage_video(settings: Settings, stage: str) -> None:
    """A text-to-video model over the T2I: a MotionAdapter and a spatial LoRA of the frozen T2I (AnimateLCM's layout)
    learnt together on 16-frame clips made as VIDEO_DATA[stage] says, with AnimateDiff's linear betas.
    Products: DIR/<stage>_motion_adapter.safetensors and DIR/<stage>_spatial_lora.safetensors (EMA weights)."""
    from evs_framework.loaders.motion_adapter import write_motion_adapter_file
    from evs_plugins.animatediff import motion_unet_over

    video = settings.video(stage)
    vae, unet = load_vae(settings), load_unet(settings)
    tokenizer, encoder = text_model(settings)
    embed = TextEmbeddings(tokenizer, encoder)
    torch.manual_seed(settings.seed + 4 + TRAINING_STAGES[stage])
    lora = add_lora(unet, video.lora_rank)
    adapter = models.make_motion_adapter().to(settings.device)
    motion_unet = motion_unet_over(unet, adapter)  # its spatial modules are the UNet's, adapted by the LoRA
    data = WorldData(settings.seed, TRAINING_STAGES[stage], settings.device)
    ac = alphas_cumprod("linear", settings.device)
    pool = LatentPool(settings.batch or DEFAULT_BATCH[stage], settings.reuse)

    def new_latents(count: int) -> tuple[torch.Tensor, list[str]]:
        clips, prompts = video_clips(data, video, count)
        return encode(vae, clips.flatten(0, 1)).float().unflatten(0, clips.shape[:2]), prompts

    def loss_of(data: WorldData, batch: int) -> torch.Tensor:
        latents, prompts = pool.draw(data, new_latents)
        x0 = latents.transpose(1, 2)  # (B, C, T, h, w), as UNetMotionModel takes clips
        noise, t = data.randn(x0.shape), data.timesteps(batch)
        text = embed(data.dropped(prompts)).repeat_interleave(FRAMES, dim=0)  # one per frame
        eps = motion_unet(noised(x0, noise, t, ac), t, encoder_hidden_states=text).sample
        return torch.nn.functional.mse_loss(eps.float(), noise)

    trained = torch.nn.ModuleDict({"lora": lora, "adapter": adapter})
    summary = train(stage, settings, trained, loss_of, data, use_ema=True)
    write_motion_adapter_file(adapter, settings.work / f"{stage}_motion_adapter.safetensors", "diffusers")
    save_lora(lora, settings.work / f"{stage}_spatial_lora.safetensors")
    summary.update(adapter_parameters=models.parameter_count(adapter), lora_parameters=models.parameter_count(lora),
                   beta_schedule="linear", prediction="epsilon", reuse=settings.reuse, pool=pool.capacity,
                   prompt_dropout=PROMPT_DROPOUT, frames=FRAMES, video=attrs.asdict(video))
    write_summary(settings, stage, summary)


@torch.no_grad()
def stage_eval(settings: Settings) -> None:
    """Quality numbers for whatever products exist (quality.py says what each measures)."""
    from evs_framework.io.vae import FrameCodec, decode_latents, frame_vae_space
    from evs_plugins.animatediff import AnimateDiffBackend
    from evs_plugins.sd15 import SD15Backend, SD15Parts

    began = time.perf_counter()
    vae = load_vae(settings)
    held = held_out_specs(max(1, settings.measure // 32))
    frames, recon, masks = reconstruct(vae, held, settings.device)
    rendered = quality.dominant_colours(frames[::FRAMES])  # the colour measure on the rendered clips themselves
    result = {"rendered_colour_accuracy": round(sum(f == s.colour for f, s in zip(rendered, held)) / len(held), 3),
              **{f"vae_{k}": v for k, v in reconstruction_measures(frames, recon, masks).items()},
              "vae_held_out_frames": len(frames)}
    if (settings.work / "unet").is_dir():
        tokenizer, encoder = text_model(settings)
        parts = SD15Parts(load_unet(settings), vae, encoder, tokenizer)
        codec = FrameCodec(vae, frame_vae_space(models.LATENT_SPACE, vae))
        t2i_schedule, t2v_schedule = quality.schedules()
        decode = lambda latents: decode_latents(vae, latents, 32)  # noqa: E731
        # for each colour, prompts of held-out clips of that colour; two samples each
        by_colour = {c: [] for c in quality.COLOUR_NAMES}
        for spec in held_out_specs(400, offset=1000):
            if len(by_colour[spec.colour]) < settings.eval_prompts:
                by_colour[spec.colour].append(spec)
        rows, hits, total = [], 0, 0
        for colour, specs in by_colour.items():
            images = torch.cat([decode(quality.sample(SD15Backend(parts, codec), s.prompt, 2, t2i_schedule, 3.0, seed=i))
                                for i, s in enumerate(specs)])
            found = quality.dominant_colours(images)
            hits, total = hits + sum(f == colour for f in found), total + len(found)
            rows.append(images)
        quality.save_grid(torch.stack(rows), settings.work / "t2i_samples.png")
        result.update(t2i_colour_accuracy=round(hits / total, 3), t2i_samples=total)
        specs = [specs[0] for specs in by_colour.values()]
        one_by_one = torch.stack([decode(quality.sample(SD15Backend(parts, codec), s.prompt, FRAMES, t2i_schedule, 3.0,
                                                        seed=200 + i)) for i, s in enumerate(specs)])
        result.update(t2i_frame_by_frame_difference=round(quality.frame_difference(one_by_one), 4),
                      rendered_frame_difference=round(quality.frame_difference(render(specs).cpu()), 4))
        for stage in VIDEO_DATA:
            if (settings.work / f"{stage}_motion_adapter.safetensors").is_file():
                backend = AnimateDiffBackend(parts, codec, load_video_unet(settings, stage))
                videos = torch.stack([decode(quality.sample(backend, s.prompt, FRAMES, t2v_schedule, 1.0, seed=100 + i))
                                      for i, s in enumerate(specs)])
                votes = [max(set(v), key=v.count) for v in map(quality.dominant_colours, videos)]
                quality.save_grid(videos[:, ::2], settings.work / f"{stage}_clips.png")
                result[f"{stage}_frame_difference"] = round(quality.frame_difference(videos), 4)
                result[f"{stage}_colour_accuracy"] = round(sum(v == s.colour for v, s in zip(votes, specs)) / len(specs), 3)
    result["wall_s"] = round(time.perf_counter() - began, 1)
    (settings.work / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    emit({"stage": "eval", **result})


def stage_export(settings: Settings, folder: Path) -> None:
    _, encoder = text_model(settings)
    vae, unet = load_vae(settings), load_unet(settings)
    adapters = {stage: load_adapter(settings, stage) for stage in VIDEO_DATA}
    loras = {stage: settings.work / f"{stage}_spatial_lora.safetensors" for stage in VIDEO_DATA}
    loras["style"] = settings.work / STYLE_LORA
    summaries = {stage: json.loads((settings.work / f"{stage}.json").read_text()) for stage in TRAINING_STAGES
                 if stage not in OPTIONAL_STAGES or (settings.work / f"{stage}.json").is_file()}
    evaluation = settings.work / "eval.json"
    record = {
        "seed": summaries["vae"]["seed"],
        "command": "python -m evs_framework.toyworld.train (evs_framework/toyworld/train.py)",
        "scaling_factor": vae.config.scaling_factor,
        "parameters": {"vae": models.parameter_count(vae), "unet": models.parameter_count(unet),
                       "text_encoder": models.parameter_count(encoder),
                       **{f"{stage}_motion_adapter": models.parameter_count(a) for stage, a in adapters.items()},
                       **{f"{name}_lora": summaries[name]["lora_parameters"] for name in loras}},
        "stages": summaries,
        "evaluation": json.loads(evaluation.read_text()) if evaluation.is_file() else None,
    }
    files = models.export(vae, unet, encoder, settings.work / "tokenizer", adapters, loras, folder, record)
    emit({"stage": "export", "folder": str(folder), "total_bytes": sum(files.values())})


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evs_framework.toyworld.train", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", nargs="+", choices=STAGES, required=True, help="stages to run, in order")
    parser.add_argument("--work", type=Path, required=True, help="folder of checkpoints and stage products")
    parser.add_argument("--steps", type=int, default=1000, help="total steps of each training stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, help="frames (vae, decoder, t2i) or clips (t2v) a step; defaults "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_BATCH.items()))
    parser.add_argument("--lr", type=float, help="peak learning rate; defaults "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log-every", type=int, help="steps per progress line (default: steps / 40)")
    parser.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (0: at the end only)")
    parser.add_argument("--max-minutes", type=float, help="stop a training stage after this long, "
                        "saving it; its learning-rate schedule then follows time or steps, whichever is further along")
    parser.add_argument("--measure", type=int, default=256, help="training frames the VAE's scaling factor is "
                        "measured on; held-out frames for its PSNR: half as many")
    parser.add_argument("--reuse", type=int, default=4, help="t2i, t2v: times each encoded latent is used, on "
                        "average (a pool of recent latents; encoding the frames costs more than the UNet's step)")
    parser.add_argument("--eval-prompts", type=int, default=4, help="held-out prompts per colour in eval")
    parser.add_argument("--soften", type=int, help="t2v, vc: down-up sampling factor of their training clips "
                        "(defaults: " + ", ".join(f"{k} {v.soften}" for k, v in VIDEO_DATA.items()) + ")")
    parser.add_argument("--speed-scale", type=float, help="t2v, vc: the share of its prompt's speed a training clip's "
                        "shape moves at (defaults: " + ", ".join(f"{k} {v.speed_scale}" for k, v in VIDEO_DATA.items()) + ")")
    parser.add_argument("--lora-rank", type=int, help="t2v, vc: the spatial LoRA's rank (defaults: "
                        + ", ".join(f"{k} {v.lora_rank}" for k, v in VIDEO_DATA.items()) + ")")
    parser.add_argument("--shape-weight", type=float, default=SHAPE_WEIGHT, help="vae, decoder: the pixel loss's "
                        f"weight inside the shape, against 1 on the background (default {SHAPE_WEIGHT:g})")
    parser.add_argument("--border-weight", type=float, default=1.0, help="vae, decoder: the pixel loss's weight within "
                        f"{BORDER} pixels of the frame's edges, against 1 inside (default 1)")
    parser.add_argument("--export", type=Path, default=models.EXPORT_DIR, help="where export writes")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    overrides = {field: value for field, value in (("soften", args.soften), ("speed_scale", args.speed_scale),
                                                   ("lora_rank", args.lora_rank)) if value is not None}
    settings = Settings(args.work, args.seed, args.steps, args.batch, args.lr, torch.device(args.device),
                        args.log_every, args.save_every, args.max_minutes, args.measure, args.reuse,
                        args.eval_prompts, overrides, args.shape_weight, args.border_weight)
    settings.work.mkdir(parents=True, exist_ok=True)
    if settings.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # every step has the same shapes
    runs = {"vae": stage_vae, "decoder": stage_decoder, "t2i": stage_t2i, "t2v": lambda s: stage_video(s, "t2v"),
            "vc": lambda s: stage_video(s, "vc"), "style": stage_style, "eval": stage_eval,
            "export": lambda s: stage_export(s, args.export)}
    for stage in args.stage:
        runs[stage](settings)


if __name__ == "__main__":
    main()
