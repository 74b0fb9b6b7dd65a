import json
import re
from pathlib import Path

import imageio.v2
import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from evs_framework.errors import VideoError
from evs_framework.io.video_io import Clip, probe_video, read_video, side_by_side, write_json, write_video

# H.264 is lossy: a smooth gradient written at high quality comes back within this mean error, in [-1, 1] units.
ROUND_TRIP_TOLERANCE = 0.05


def moving_gradient(frame_count: int, height: int, width: int) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1]: a horizontal ramp that shifts right each frame, a vertical ramp, a constant."""
    x = torch.linspace(-1, 1, width).expand(height, width)
    y = torch.linspace(-1, 1, height).unsqueeze(1).expand(height, width)
    frames = [torch.stack([(x + 0.1 * t).clamp(-1, 1), y, torch.full_like(x, 0.2)]) for t in range(frame_count)]
    return torch.stack(frames)


def brightness_indexed(frame_count: int, height: int = 32, width: int = 32) -> np.ndarray:
    """(F, H, W, 3) uint8 flat frames whose grey level, 20 * (index + 1), tells which frame they are."""
    levels = 20 * (np.arange(frame_count) + 1)
    return np.broadcast_to(levels[:, None, None, None], (frame_count, height, width, 3)).astype(np.uint8)


def frame_indices(clip: Clip) -> list[int]:
    grey_levels = (clip.frames.mean(dim=(1, 2, 3)) + 1) * 127.5
    return [round(level / 20) - 1 for level in grey_levels.tolist()]


def test_round_trip_keeps_frame_count_size_fps_and_pixels(tmp_path):
    frames = moving_gradient(6, height=48, width=64)
    path = write_video(tmp_path / "clip.mp4", frames, fps=8)

    info = probe_video(path)
    clip = read_video(path, max_frames=None)

    assert (info.fps, info.width, info.height, info.frame_count) == (8.0, 64, 48, 6)
    assert clip.frames.shape == (6, 3, 48, 64)
    assert clip.frames.dtype == torch.float32
    assert clip.fps == 8.0
    assert clip.source == path
    assert clip.notes == ()
    assert (clip.frames - frames).abs().mean() < ROUND_TRIP_TOLERANCE


def test_write_video_accepts_uint8_frames_and_creates_the_folder(tmp_path):
    path = write_video(tmp_path / "new" / "folder" / "flat.mp4", brightness_indexed(3), fps=4)

    assert frame_indices(read_video(path)) == [0, 1, 2]


def test_write_video_clamps_float_frames(tmp_path):
    out_of_range = torch.stack([torch.full((3, 16, 16), 1.5), torch.full((3, 16, 16), -1.5)])

    frames = read_video(write_video(tmp_path / "clamped.mp4", out_of_range, fps=4)).frames

    assert frames[0].min() > 0.95
    assert frames[1].max() < -0.95


@pytest.mark.parametrize(
    ("max_frames", "stride", "expected"),
    [(3, 1, [0, 1, 2]), (3, 3, [0, 3, 6]), (None, 4, [0, 4, 8]), (None, 1, list(range(10))), (16, 1, list(range(10)))],
)
def test_max_frames_and_stride_select_frames(tmp_path, max_frames, stride, expected):
    path = write_video(tmp_path / "indexed.mp4", brightness_indexed(10), fps=10)

    assert frame_indices(read_video(path, max_frames=max_frames, stride=stride)) == expected


def test_crop_to_multiple_takes_the_centre_and_notes_it(tmp_path):
    path = write_video(tmp_path / "odd.mp4", moving_gradient(2, height=50, width=70), fps=4)
    original = read_video(path, multiple=2).frames

    with capture_logs() as logs:
        clip = read_video(path, fit="crop", multiple=8)

    assert clip.frames.shape == (2, 3, 48, 64)
    assert torch.equal(clip.frames, original[..., 1:49, 3:67])
    assert clip.notes == ("cropped 70x50 -> 64x48 (sides must be multiples of 8)",)
    assert logs == [
        {"event": "video_resized", "path": str(path), "from_size": "70x50", "to_size": "64x48", "log_level": "info"}
    ]


def test_pad_to_multiple_keeps_the_original_in_the_middle(tmp_path):
    path = write_video(tmp_path / "odd.mp4", moving_gradient(2, height=50, width=70), fps=4)
    original = read_video(path, multiple=2).frames

    clip = read_video(path, fit="pad", multiple=8)

    assert clip.frames.shape == (2, 3, 56, 72)
    assert torch.equal(clip.frames[..., 3:53, 1:71], original)
    # the added border repeats the edge pixels
    assert torch.equal(clip.frames[..., 0, 1:71], original[..., 0, :])
    assert torch.equal(clip.frames[..., 3:53, 71], original[..., -1])
    assert clip.notes == ("padded 70x50 -> 72x56 (sides must be multiples of 8)",)


def test_unknown_fit_is_refused(tmp_path):
    path = write_video(tmp_path / "clip.mp4", moving_gradient(1, 16, 16), fps=4)

    with pytest.raises(ValueError, match="stretch"):
        read_video(path, fit="stretch")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.mp4"

    for read in (probe_video, read_video):
        with pytest.raises(VideoError, match=re.escape(f"{path} does not exist")):
            read(path)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4096), b""], ids=["random_bytes", "empty"])
def test_unreadable_file_is_a_video_error(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)

    for read in (probe_video, read_video):
        with pytest.raises(VideoError, match=re.escape(f"cannot read video {path}: ")):
            read(path)


class FramelessReader:
    """Stands in for an imageio reader of a video that opens but yields no frames (ffmpeg itself usually
    refuses such files when opening them, which the tests above cover)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def get_meta_data(self):
        return {"fps": 4.0, "duration": 0.0}

    def __iter__(self):
        return iter(())


def test_video_without_frames_is_a_video_error(tmp_path, monkeypatch):
    path = tmp_path / "frameless.mp4"
    path.write_bytes(b"stand-in")
    monkeypatch.setattr(imageio.v2, "get_reader", lambda *args, **kwargs: FramelessReader())

    for read in (probe_video, read_video):
        with pytest.raises(VideoError, match=re.escape(f"cannot read video {path}: it has no frames")):
            read(path)


def fail_after_first_frame(monkeypatch):
    """Makes every writer imageio opens raise OSError on its second frame."""
    real_get_writer = imageio.v2.get_writer

    def get_failing_writer(*args, **kwargs):
        writer = real_get_writer(*args, **kwargs)
        real_append = writer.append_data
        appended = []

        def append_then_fail(frame, *rest):
            if appended:
                raise OSError("No space left on device")
            appended.append(frame)
            real_append(frame, *rest)

        writer.append_data = append_then_fail
        return writer

    monkeypatch.setattr(imageio.v2, "get_writer", get_failing_writer)


def test_failed_video_write_leaves_no_file(tmp_path, monkeypatch):
    fail_after_first_frame(monkeypatch)
    path = tmp_path / "out" / "clip.mp4"

    with pytest.raises(VideoError, match=re.escape(f"cannot write video {path}: No space left on device")):
        write_video(path, moving_gradient(4, 16, 16), fps=4)

    assert list(path.parent.iterdir()) == []


def test_failed_video_write_keeps_the_existing_file(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.mp4", moving_gradient(2, 16, 16), fps=4)
    before = path.read_bytes()
    fail_after_first_frame(monkeypatch)

    with pytest.raises(VideoError):
        write_video(path, moving_gradient(4, 32, 32), fps=4)

    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_odd_sizes_ask_for_even_sizes(tmp_path):
    path = tmp_path / "odd.mp4"

    with pytest.raises(VideoError, match="even"):
        write_video(path, moving_gradient(2, 15, 16), fps=4)

    assert list(tmp_path.iterdir()) == []


def test_write_json_round_trips_in_order(tmp_path):
    data = {"zeta": 1, "alpha": [1.5, "x"], "nested": {"b": None, "a": True}}

    path = write_json(tmp_path / "new" / "run.json", data)

    assert json.loads(path.read_text()) == data
    assert list(json.loads(path.read_text())) == ["zeta", "alpha", "nested"]
    assert path.read_text().startswith('{\n  "zeta": 1,')


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_failed_json_write_is_atomic(tmp_path, monkeypatch, existing):
    path = tmp_path / "run.json"
    if existing:
        write_json(path, {"old": True})
    real_write_text = Path.write_text

    def write_half_then_fail(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)

    with pytest.raises(VideoError, match=re.escape(f"cannot write {path}: ")):
        write_json(path, {"new": list(range(100))})

    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == ([path] if existing else [])
    if existing:
        assert json.loads(path.read_text()) == {"old": True}


def test_side_by_side_matches_heights_and_frame_counts():
    short_wide = torch.rand(5, 3, 32, 48) * 2 - 1
    tallest = torch.rand(4, 3, 64, 32) * 2 - 1
    small = torch.rand(6, 3, 16, 30) * 2 - 1

    combined = side_by_side([short_wide, tallest, small])

    assert combined.shape == (4, 3, 64, 96 + 32 + 120)
    assert torch.equal(combined[..., 96:128], tallest)
    assert combined.min() >= -1 and combined.max() <= 1


def test_side_by_side_rounds_widths_to_even():
    combined = side_by_side([torch.zeros(2, 3, 20, 20), torch.zeros(2, 3, 30, 31)])

    # 20x20 scaled to height 30 is 30 wide; 31 is rounded to the even 32
    assert combined.shape == (2, 3, 30, 30 + 32)


def test_size_resizes_before_fitting_and_notes_it(tmp_path):
    path = write_video(tmp_path / "wide.mp4", moving_gradient(3, 96, 160), 8.0)
    clip = read_video(path, size=(84, 52))
    assert clip.frames.shape == (3, 3, 48, 80)  # 84x52 resized, then cropped to multiples of 8
    assert clip.notes[0] == "resized 160x96 -> 84x52 (video.size)" and clip.notes[1].startswith("cropped 84x52 -> 80x48")
    assert read_video(path, size=(160, 96)).notes == ()  # already that size: untouched
