"""Metrics: VBench's exact temporal flickering, proxies moving the right way, aggregation, `evs eval`."""

import csv
import json

import numpy as np
import pytest

from evs_framework.cli import main
from evs_framework.errors import PluginError
from evs_framework.metrics import Metric, MetricResult, aggregate
from evs_framework.video_io import write_video
from evs_plugins.metrics_basic import (
    background_consistency_hist, consistency, subject_consistency_hist, temporal_flickering, tenengrad,
)


def textured_clip(frames=8, height=64, width=96, seed=0, shift=0):
    """uint8 (T, H, W, 3): a fixed random texture panned `shift` pixels a frame."""
    texture = np.random.default_rng(seed).integers(0, 256, (height, width + shift * frames, 3), dtype=np.uint8)
    return np.stack([texture[:, t * shift:t * shift + width] for t in range(frames)])


def test_temporal_flickering_matches_the_closed_form():
    levels = [10, 30, 25, 25, 90]  # a grey clip whose level jumps by 20, 5, 0, 65
    frames = np.stack([np.full((8, 8, 3), level, dtype=np.uint8) for level in levels])
    assert temporal_flickering(frames, 8.0).value == pytest.approx((255 - (20 + 5 + 0 + 65) / 4) / 255)
    assert temporal_flickering(frames[:1], 8.0).value == 1.0


def test_blur_lowers_sharpness():
    clip = textured_clip()
    blurred = clip.astype(np.float32)
    for axis in (1, 2):  # a 3-tap box blur along each side
        blurred = (np.roll(blurred, 1, axis) + blurred + np.roll(blurred, -1, axis)) / 3
    assert tenengrad(blurred.astype(np.uint8), 8.0).value < 0.5 * tenengrad(clip, 8.0).value


def test_consistency_follows_vbench_rule():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = consistency(features)
    assert result.terms == (1.0, 0.0)  # frame 1: same as 0 and 0; frame 2: orthogonal to both
    assert result.value == 0.5


def test_a_scene_cut_lowers_both_histogram_consistencies():
    steady = textured_clip(seed=0)
    cut = np.concatenate([steady[:4], (255 - textured_clip(seed=1)[4:]) // 3])  # another, darker scene
    for proxy in (subject_consistency_hist, background_consistency_hist):
        assert proxy(steady, 8.0).value > 0.99
        assert proxy(cut, 8.0).value < proxy(steady, 8.0).value - 0.2


def test_frame_weighted_aggregation_counts_frames_not_videos():
    metric = Metric("proxy.x", "proxy", lambda frames, fps: MetricResult(0.0), aggregate="frame_weighted")
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
        Metric(name, family, lambda frames, fps: MetricResult(0.0))


def test_eval_scores_outputs_against_their_sources(seed_config, tmp_path, zoo, capsys):
    assert main(["run", str(seed_config()), "--weights-dir", str(zoo), "--output-dir", str(tmp_path / "run"), "-q"]) == 0
    output = tmp_path / "run" / "ball.IDM_VDM_IDM.mp4"
    capsys.readouterr()
    assert main(["eval", str(output), "--report-dir", str(tmp_path / "report"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "temporal_flickering [vbench_exact]" in printed and "output - source" in printed
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    [video] = data["videos"]
    assert video["source"].endswith("ball.mp4") and video["size"] == [128, 96] and video["frames"] == 8
    assert set(video["values"]) == {"temporal_flickering", "proxy.sharpness_tenengrad",
                                    "proxy.subject_consistency_hist", "proxy.background_consistency_hist"}
    for name, value in video["values"].items():
        assert video["deltas"][name] == pytest.approx(value - video["source_values"][name])
    rows = list(csv.DictReader((tmp_path / "report" / "metrics.csv").open()))
    assert len(rows) == 4 and {row["metric"] for row in rows} == set(video["values"])


def test_eval_of_a_missing_video_is_one_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.mp4")]) == 2
    assert "nope.mp4 does not exist" in capsys.readouterr().err


def test_eval_of_an_unknown_metric_suggests_the_known_ones(tmp_path, capsys):
    video = write_video(tmp_path / "v.mp4", textured_clip(frames=3, height=32, width=32), 8.0)
    assert main(["eval", str(video), "--metrics", "temporal_flicker"]) == 2
    assert "did you mean 'temporal_flickering'" in capsys.readouterr().err
