"""Reading, writing and arranging videos: frames are (F, 3, H, W) float tensors in [-1, 1].

Files are read and written with ffmpeg (through imageio). Every output is written atomically: to a
temporary file next to the destination, then moved onto it, so an interrupted run never leaves a
half-written video or JSON file under the real name. A video is moved only once its frames count back
from the file, since ffmpeg failing at the end (a full disk) raises nothing through imageio. Partial files
that a killed process leaves behind are removed by the next run (output_guard).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

import attrs
import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import structlog
import torch
import torch.nn.functional as F

from evs_framework.errors import VideoError
from evs_framework.paths import unreadable_reason

log = structlog.get_logger(__name__)

FITS = ("crop", "pad")
# imageio maps quality 9 to libx264 CRF 5: visually lossless, but unlike CRF 0 (quality 10) still a plain
# 4:2:0 stream that every player opens. macro_block_size=1 stops imageio resizing sides to multiples of 16.
WRITER_SETTINGS = dict(format="FFMPEG", codec="libx264", quality=9, macro_block_size=1, pixelformat="yuv420p")
# imageio and ffmpeg raise these when a file cannot be opened or decoded, or ffmpeg exits early.
_FFMPEG_ERRORS = (OSError, RuntimeError)


@attrs.frozen
class VideoInfo:
    path: Path
    fps: float
    width: int
    height: int
    frame_count: int  # estimated from duration * fps; the exact count needs a full decode


@attrs.frozen
class Clip:
    frames: torch.Tensor  # (F, 3, H, W) float32 in [-1, 1]
    fps: float
    source: Path
    notes: tuple[str, ...]


def frames_to_float(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) float in [-1, 1] (clamped) -> (F, H, W, 3) uint8."""
    scaled = ((frames.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _reason(error: Exception) -> str:
    # ffmpeg's own explanation is the last line of the (long) message imageio passes on.
    return _last_line(str(error)) or type(error).__name__


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _unreadable(path: Path, reason: str) -> VideoError:
    return VideoError(f"cannot read video {path}: {reason}; check it is a playable video file (ffprobe {path})")


def _existing(path) -> Path:
    path = Path(path)
    reason = unreadable_reason(path)
    if reason:
        raise VideoError(f"video {path} {reason}; check its path (relative paths start at the spec's folder)")
    return path


def probe_video(path) -> VideoInfo:
    """Checks that `path` is a video with at least one decodable frame, without decoding the rest."""
    path = _existing(path)
    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            meta = reader.get_meta_data()
            first_frame = next(iter(reader), None)
    except _FFMPEG_ERRORS as error:
        raise _unreadable(path, _reason(error)) from error
    if first_frame is None:
        raise _unreadable(path, "it has no frames")
    fps = float(meta["fps"])
    height, width = first_frame.shape[:2]
    frame_count = max(1, round(float(meta.get("duration") or 0.0) * fps))
    return VideoInfo(path=path, fps=fps, width=width, height=height, frame_count=frame_count)


def _fit_to_multiple(frames: torch.Tensor, multiple: int, fit: str) -> torch.Tensor:
    height, width = frames.shape[-2:]
    if fit == "crop":
        new_height, new_width = height - height % multiple, width - width % multiple
        top, left = (height - new_height) // 2, (width - new_width) // 2
        return frames[..., top : top + new_height, left : left + new_width]
    extra_height, extra_width = -height % multiple, -width % multiple
    padding = (extra_width // 2, extra_width - extra_width // 2, extra_height // 2, extra_height - extra_height // 2)
    return F.pad(frames, padding, mode="replicate")


def read_video(path, *, max_frames: int | None = 16, stride: int = 1, fit: str = "crop", multiple: int = 8,
               size: tuple[int, int] | None = None) -> Clip:
    """Reads frames 0, stride, 2*stride, ... (at most `max_frames`; None reads all), resizes them to `size`
    (width, height) when given, and makes both sides multiples of `multiple`, by a centre crop or by replicating
    the edges."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if stride < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"stride and max_frames must be at least 1, got stride={stride}, max_frames={max_frames}")
    path = _existing(path)
    kept = []
    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            fps = float(reader.get_meta_data()["fps"])
            for index, frame in enumerate(reader):
                if index % stride == 0:
                    kept.append(frame)
                if len(kept) == max_frames:
                    break
    except _FFMPEG_ERRORS as error:
        raise _unreadable(path, _reason(error)) from error
    if not kept:
        raise _unreadable(path, "it has no frames")

    frames, notes = fit_frames(frames_to_float(np.stack(kept)), str(path), fit=fit, multiple=multiple, size=size)
    return Clip(frames=frames, fps=fps, source=path, notes=notes)


def fit_frames(frames: torch.Tensor, name: str, *, fit: str = "crop", multiple: int = 8,
               size: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Frames (F, 3, H, W) resized to `size` (width, height) when given, with both sides made multiples of
    `multiple` by a centre crop or by replicating the edges; and notes saying what was done. `name` names the video
    in errors."""
    notes = []
    if size is not None and tuple(frames.shape[-2:]) != (size[1], size[0]):
        original = f"{frames.shape[-1]}x{frames.shape[-2]}"
        frames = F.interpolate(frames, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
        notes.append(f"resized {original} -> {size[0]}x{size[1]} (video.size)")
    height, width = frames.shape[-2:]
    if fit == "crop" and (height < multiple or width < multiple):
        raise VideoError(
            f"video {name} is {width}x{height}, under {multiple} pixels on a side; use a larger video or fit='pad'"
        )
    if height % multiple or width % multiple:
        frames = _fit_to_multiple(frames, multiple, fit)
        new_height, new_width = frames.shape[-2:]
        verb = "cropped" if fit == "crop" else "padded"
        notes.append(f"{verb} {width}x{height} -> {new_width}x{new_height} (sides must be multiples of {multiple})")
        log.info("video_resized", path=name, from_size=f"{width}x{height}", to_size=f"{new_width}x{new_height}")
    return frames.contiguous(), tuple(notes)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str):
    """Yields a temporary path next to `path`, moved onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_video(path, frames, fps: float) -> Path:
    """Writes (F, 3, H, W) float frames in [-1, 1] or (F, H, W, 3) uint8 frames as an H.264 mp4."""
    path = Path(path)
    pixels = frames_to_uint8(frames) if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3 or len(pixels) == 0:
        raise ValueError(f"frames must be (F, 3, H, W) float or (F, H, W, 3) uint8, F >= 1; got {pixels.shape}")
    height, width = pixels.shape[1:3]
    if height % 2 or width % 2:
        raise VideoError(
            f"cannot write {path}: frames are {width}x{height}, but H.264 needs even sides; crop or pad to even sizes"
        )
    try:
        # ffmpeg picks the container from the extension, so the temporary name must end in .mp4.
        with atomic_path(path, ".mp4") as partial:
            with _ffmpeg_writer(partial, fps) as writer:
                for frame in pixels:
                    writer.append_data(frame)
            _check_written(partial, len(pixels))
    except _FFMPEG_ERRORS as error:
        raise VideoError(
            f"cannot write video {path}: {_reason(error)}; check the folder is writable and has space"
        ) from error
    return path


class _AbandonWrite(BaseException):
    """Thrown into imageio-ffmpeg's frame generator to stop ffmpeg: a plain close (GeneratorExit) makes the generator
    wait while ffmpeg encodes every frame it holds, any other BaseException makes it kill ffmpeg."""


@contextlib.contextmanager
def _ffmpeg_writer(partial: Path, fps: float):
    """imageio's ffmpeg writer; when the block fails or is interrupted (Ctrl-C, SIGTERM), ffmpeg is killed at once
    instead of finishing a file that is about to be deleted."""
    writer = imageio.get_writer(partial, fps=fps, **WRITER_SETTINGS)
    try:
        yield writer
    except BaseException:
        frame_sink = getattr(writer, "_write_gen", None)  # imageio's handle on ffmpeg; None before the first frame
        if frame_sink is not None:
            with contextlib.suppress(_AbandonWrite, StopIteration):
                frame_sink.throw(_AbandonWrite())
        raise
    finally:
        writer.close()


def _count_written_frames(path: Path) -> int:
    """The frames in the first video stream of the file just written, decoded (ffmpeg 7 and later print no frame
    count when packets are only copied); raises RuntimeError with ffmpeg's reason when it cannot read it back."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", f"file:{path}",
               "-map", "0:v:0", "-f", "null", "-"]
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    counts = re.findall(r"frame=\s*(\d+)", result.stderr)
    if result.returncode != 0 or not counts:
        reason = _last_line(result.stderr) or f"exit status {result.returncode}"
        raise RuntimeError(f"ffmpeg cannot read back the file it wrote ({reason})")
    return int(counts[-1])


def _check_written(partial: Path, frame_count: int) -> None:
    """imageio ignores ffmpeg's exit status, so a write that fails at the end (a full disk's "Error writing
    trailer") leaves a truncated file and no error; count the frames that really reached the file instead."""
    if not partial.is_file() or partial.stat().st_size == 0:
        raise RuntimeError("ffmpeg wrote nothing")
    written = _count_written_frames(partial)
    if written != frame_count:
        raise RuntimeError(f"ffmpeg wrote {written} of {frame_count} frames")


def write_json(path, data: dict) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path, text: str) -> Path:
    """Writes `text` to a temporary file beside `path`, then moves it into place."""
    path = Path(path)
    try:
        with atomic_path(path, path.suffix) as partial:
            partial.write_text(text, encoding="utf-8")
    except OSError as error:
        raise VideoError(f"cannot write {path}: {error}; check the folder is writable and has space") from error
    return path


def side_by_side(panels: list[torch.Tensor]) -> torch.Tensor:
    """Panels (F, 3, H, W) side by side: scaled to the tallest height (keeping aspect, even widths) and
    cut to the shortest frame count."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    height = max(panel.shape[-2] for panel in panels)
    frame_count = min(panel.shape[0] for panel in panels)
    return torch.cat([scale_to_height(panel[:frame_count], height) for panel in panels], dim=-1)


def scale_to_height(frames: torch.Tensor, height: int) -> torch.Tensor:
    """(F, 3, H, W) frames scaled to `height`, keeping the aspect ratio, to an even width."""
    width = max(2, 2 * round(frames.shape[-1] * height / frames.shape[-2] / 2))
    if frames.shape[-2:] == (height, width):
        return frames
    return F.interpolate(frames.float(), size=(height, width), mode="bilinear", align_corners=False)
