"""The toy-world experiment keeps what it measured: rows already in its rows file (same models and settings) are
not run again, and rows of other models or settings are not reused."""

import json

import pytest

from evs_framework.bench import runs
from evs_framework.bench.suite import Cell
from evs_framework.toyworld import experiment


def test_rows_already_measured_are_reused_and_others_are_run(tmp_path, monkeypatch, registry):
    clips = experiment.held_out_clips(tmp_path / "clips", 2)
    rows_file = tmp_path / "rows.jsonl"
    key = runs.fingerprint(experiment.toy_base(), Cell("IDM", "IDM", {}), registry)
    old = [{"composition": "IDM", "fingerprint": key, "clip": c.video.stem, "seed": 23, "psnr": 30.0 + i}
           for i, c in enumerate(clips)]
    stale = {**old[0], "fingerprint": "other models", "psnr": 1.0}
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in [stale, *old]))

    def must_not_run(*args, **kwargs):
        raise AssertionError("a measured (composition, seed) ran again")

    monkeypatch.setattr(runs, "make_plan", must_not_run)
    monkeypatch.setattr(runs, "run_job", must_not_run)
    rows = experiment.run_compositions(clips, ["IDM"], [23], tmp_path / "runs", registry, None, None, rows_file=rows_file)
    assert [r["psnr"] for r in rows] == [30.0, 31.0]
    with pytest.raises(AssertionError, match="ran again"):  # seed 24 was never measured
        experiment.run_compositions(clips, ["IDM"], [24], tmp_path / "runs", registry, None, None, rows_file=rows_file)
    other_settings = runs.fingerprint(experiment.toy_base({"idm_inverse_strength": 0.3}), Cell("IDM", "IDM", {}), registry)
    other_models = runs.fingerprint(experiment.toy_base(models={"idm": {"name": "toyWatercolor"}}), Cell("IDM", "IDM", {}),
                                    registry)
    assert len({key, other_settings, other_models}) == 3
