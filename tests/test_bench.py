"""`evs bench SUITE`: suite files checked before anything runs, every (cell, clip, seed) run and measured, rows kept
for a rerun, the report, results and Pareto picture written."""

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from evs_framework import cli
from evs_framework.bench import runs
from evs_framework.bench.benchmark import bench_files, run_suite, run_workers
from evs_framework.bench.pareto import pareto_front
from evs_framework.bench.suite import SHIPPED_SUITES, cell_spec_data, load_suite, parse_suite
from evs_framework.errors import EVSError, SpecError

TOY = {"inputs": {"toyworld": {"clips": 1}}, "models": {"idm": {"name": "toyI"}, "vdm": {"name": "toyV"}},
       "compositions": ["IDM", "IDM_VDM_IDM"], "settings": {"stable_steps": [5]}, "seeds": [23]}


@pytest.mark.parametrize("change, expected", [
    ({"sedes": [23]}, "$: unknown key 'sedes' (did you mean 'seeds'"),
    ({"grid": {"stable_num": [2, 0]}}, "$.grid.stable_num[1]: 0; the T2V model needs at least 1 step"),
    ({"grid": {"stable_nun": [2]}}, "$.grid.stable_nun[0]: 'stable_nun' is not a setting (did you mean 'stable_num'"),
    ({"models": {"idm": {"name": "toyJ"}, "vdm": {"name": "toyV"}}}, "$.models.idm.name: unknown model name 'toyJ'"),
    ({"compositions": ["IDM", "IDM_VMD_IDM"]}, "$.compositions (IDM_VMD_IDM): unknown composition 'IDM_VMD_IDM'"),
    ({"inputs": {"toyworld": {"clips": 1, "kind": "vc3"}}}, "$.inputs.toyworld.kind: 'vc3' (did you mean 'vc2'?)"),
    ({"baseline": "IDM_VDM"}, "$.baseline: 'IDM_VDM' is not a row of this suite"),
    ({"settings": {"stable_num": 0}, "grid": {"stable_steps": [2]}}, "$.settings.stable_num: 0; the T2V model needs"),
])
def test_a_bad_suite_is_refused_with_one_line_naming_the_key(change, expected, plugins, registry):
    with pytest.raises(SpecError) as raised:
        parse_suite({**TOY, **change}, registry, plugins, "suite.yaml")
    assert raised.value.problems == [next(p for p in raised.value.problems if p.startswith(expected))]


def test_a_grid_is_every_combination_and_a_list_of_grids_one_after_another(plugins, registry):
    crossed = parse_suite({**TOY, "compositions": ["IDM_VDM_IDM"], "grid": {"stable_num": [1, 2], "stable_steps": [2, 5]}},
                          registry, plugins)
    assert [c.label for c in crossed.cells] == [
        "IDM_VDM_IDM stable_num=1 stable_steps=2", "IDM_VDM_IDM stable_num=1 stable_steps=5",
        "IDM_VDM_IDM stable_num=2 stable_steps=2", "IDM_VDM_IDM stable_num=2 stable_steps=5"]
    assert crossed.cells[0].settings == {"stable_num": 1, "stable_steps": [2]}  # one value of a list setting: a list
    in_turn = parse_suite({**TOY, "compositions": ["IDM_VDM_IDM"], "grid": [{"stable_num": [1, 2]}, {"stable_steps": [2]}]},
                          registry, plugins)
    assert [c.label for c in in_turn.cells] == ["IDM_VDM_IDM stable_num=1", "IDM_VDM_IDM stable_num=2",
                                                "IDM_VDM_IDM stable_steps=2"]


def test_the_pareto_front_keeps_the_points_nothing_beats():
    # (cost, value): b is dominated by a (cheaper, as good), d by c (same cost, worse), e is the best and dearest
    points = [(1.0, 5.0), (2.0, 5.0), (3.0, 7.0), (3.0, 6.0), (9.0, 9.0), (0.5, 1.0)]
    assert pareto_front(points) == [True, False, True, False, True, True]
    # lower is better: the cheapest point is also the lowest, so it alone is on the front
    assert pareto_front(points, lower_is_better=True) == [False, False, False, False, False, True]
    assert pareto_front([(2.0, 3.0), (2.0, 3.0)]) == [True, True]  # a tie beats neither


def test_each_grid_value_has_its_own_fingerprint(plugins, registry):
    suite = parse_suite({**TOY, "compositions": ["IDM_VDM_IDM"], "grid": {"stable_num": [1, 2]}}, registry, plugins)
    keys = {runs.fingerprint(suite.base, cell, registry) for cell in suite.cells}
    assert len(keys) == 2


def test_shipped_suites_load_and_plan(plugins, registry, tmp_path):
    for name in ("toy_enhance", "toy_enhance_vc2", "toy_sweep"):
        suite = load_suite(SHIPPED_SUITES / f"{name}.yaml", registry, plugins)
        assert suite.baseline in [c.label for c in suite.cells]
    assert len(load_suite(SHIPPED_SUITES / "toy_sweep.yaml", registry, plugins).cells) == 12  # four knobs, three values
    own = load_suite(SHIPPED_SUITES / "toy_videoelevator_own.yaml", registry, plugins)
    assert own.baseline == "source" and own.base["models"]["idm"] == {"name": "toyI", "steps": 30}
    (tmp_path / "clips.csv").write_text("video,prompt\nclip.mp4,an astronaut riding a horse\n")
    seed = load_suite(SHIPPED_SUITES / "seed_enhance.yaml", registry, plugins,
                      {"inputs": {"manifest": str(tmp_path / "clips.csv")}})  # planned only: it needs real weights
    assert seed.base["models"]["idm"] == {"name": "EP", "upscale": 2.0} and seed.base["using_attn"] is True


def test_edit_and_style_suites_take_changed_clips_and_a_grid_may_vary_using_attn(plugins, registry, tmp_path):
    real_edit = load_suite(SHIPPED_SUITES / "toy_real_edit.yaml", registry, plugins)
    assert real_edit.toyworld.kind == "real_edit"
    assert [c.settings for c in real_edit.cells] == [{"using_attn": False}, {"using_attn": True}]
    data = cell_spec_data(real_edit.base, [], real_edit.cells[1], 23, tmp_path)
    assert data["using_attn"] is True and "using_attn" not in data["settings"]
    assert load_suite(SHIPPED_SUITES / "toy_style.yaml", registry, plugins).base["models"]["idm"] == {"name": "toyWatercolor"}
    with pytest.raises(SpecError) as raised:
        parse_suite({**TOY, "grid": {"using_attn": [True, "yes"]}}, registry, plugins, "suite.yaml")
    assert raised.value.problems == ["$.grid.using_attn[1]: expected true/false, got string 'yes'"]
    edit = cli._toy_suite(SimpleNamespace(toy_command="edit", input="clean", clips=2, seeds=None), plugins, registry)
    assert (edit.toyworld.kind, edit.toyworld.clips, edit.seeds) == ("real_edit", 2, (23, 24))


def test_toyworld_flags_replace_the_shipped_suites_values(plugins, registry):
    args = SimpleNamespace(toy_command="eval", input="vc2", clips=3, seeds=[5], compositions=["IDM", "VDM"])
    suite = cli._toy_suite(args, plugins, registry)
    assert (suite.toyworld.clips, suite.toyworld.kind, suite.seeds) == (3, "vc2", (5,))
    assert [c.label for c in suite.cells] == ["IDM", "VDM"]
    without_idm = cli._toy_suite(SimpleNamespace(**{**vars(args), "compositions": ["VDM", "basic"]}), plugins, registry)
    assert without_idm.baseline == "VDM"  # the suite's baseline, IDM, is not run
    sweep = cli._toy_suite(SimpleNamespace(toy_command="sweep", clips=None, seeds=None, knob=["stable_num=1,3"]),
                           plugins, registry)
    assert [c.label for c in sweep.cells] == ["IDM_VDM_IDM stable_num=1", "IDM_VDM_IDM stable_num=3"]
    assert sweep.toyworld.clips == 16 and sweep.baseline == "IDM_VDM_IDM stable_num=1"


def test_a_suite_on_real_clips_runs_reports_and_is_not_run_again(tmp_path, plugins, registry, context, clip_file,
                                                                 monkeypatch):
    """The tiny random-weight EP and lightningEP on a synthetic clip, measured with two of `evs eval`'s metrics."""
    suite = parse_suite({"inputs": [{"video": str(clip_file), "prompt": "a red ball on grass"}],
                         "models": {"idm": {"name": "EP"}, "vdm": {"name": "lightningEP"}},
                         "compositions": ["IDM", "IDM_VDM_IDM"], "seeds": [23], "baseline": "IDM",
                         "video": {"max_frames": 8}, "measures": ["temporal_flickering", "proxy.sharpness_tenengrad"]},
                        registry, plugins, "tiny suite")
    files = bench_files(tmp_path / "out")
    record = run_suite(suite, tmp_path / "out", files, registry, plugins, context)

    results = json.loads(files.results.read_text())
    assert [r["composition"] for r in results["rows"]] == ["source", "IDM", "IDM_VDM_IDM"]
    assert set(results["summary"]) == {"source", "IDM", "IDM_VDM_IDM"}
    assert results["summary"]["IDM_VDM_IDM"]["unet_calls_per_clip"] > results["summary"]["IDM"]["unet_calls_per_clip"]
    assert [(d["composition"], d["against"], d["measure"]) for d in results["differences"]] == [
        ("IDM_VDM_IDM", "IDM", "temporal_flickering"), ("IDM_VDM_IDM", "IDM", "proxy.sharpness_tenengrad")]
    rows = {r["composition"]: r for r in results["rows"]}
    difference = results["differences"][0]["mean"]
    assert difference == pytest.approx(rows["IDM_VDM_IDM"]["temporal_flickering"] - rows["IDM"]["temporal_flickering"])
    report = files.report.read_text()
    assert "| IDM_VDM_IDM |" in report and "## Paired differences against IDM" in report
    with Image.open(files.pareto) as picture:
        picture.verify()
        assert picture.format == "PNG" and picture.size == (840, 560)  # two measures, two panels each
    assert len(files.rows.read_text().splitlines()) == 2  # the runs' rows, appended as they came

    def must_not_run(*args, **kwargs):
        raise AssertionError("a measured row ran again")

    monkeypatch.setattr(runs, "run_job", must_not_run)
    again = run_suite(suite, tmp_path / "out", files, registry, plugins, context)
    assert again["rows"] == record["rows"]
    changed = parse_suite({**json.loads(json.dumps(suite.base)), "inputs": suite.inputs, "seeds": [23],
                           "compositions": ["IDM"], "settings": {"idm_inverse_strength": 0.3}}, registry, plugins)
    with pytest.raises(AssertionError, match="ran again"):  # other settings: another fingerprint, so it runs
        run_suite(changed, tmp_path / "out", files, registry, plugins, context)

    def fails(spec, *args, **kwargs):
        return [SimpleNamespace(error="NaN in the T2I's output at sigma 3.2", output=None, unet_calls={})]

    monkeypatch.setattr(runs, "run_job", fails)
    with pytest.raises(EVSError, match=r"bench row IDM failed on .* \(seed 23\): NaN in the T2I's output at sigma "
                                       r"3.2; the rows measured before it are kept in .*rows.jsonl"):
        run_suite(changed, tmp_path / "out", files, registry, plugins, context)
    assert len(files.rows.read_text().splitlines()) == 2


def test_evs_bench_runs_a_toy_suite_from_its_file(tmp_path, capsys):
    """One degraded held-out clip, one seed, IDM alone at a low strength against the clip itself, with the shipped
    toy models: the command writes its four files and prints the report."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(json.dumps({**TOY, "compositions": ["IDM"], "settings": {"idm_inverse_strength": 0.2},
                                 "baseline": "source", "measures": ["psnr", "warp_error"]}))
    assert cli.main(["bench", str(suite), "--out", str(tmp_path / "out"), "-q", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| IDM |" in printed and "IDM better than source on psnr" in printed
    for name in ("results.json", "report.md", "pareto.png", "rows.jsonl"):
        assert (tmp_path / "out" / name).is_file(), name


def test_workers_share_the_rows_each_once_and_a_failed_worker_is_named(tmp_path, plugins, registry, monkeypatch):
    suite = parse_suite({**TOY, "compositions": ["IDM", "VDM", "IDM_VDM_IDM"], "seeds": [23, 24]}, registry, plugins)
    ran = []

    def recorded(spec, *args, **kwargs):
        ran.append((spec.composition, spec.seed))
        return [SimpleNamespace(error=None, output=tmp_path / "out.mp4", unet_calls={"idm": 1})]

    monkeypatch.setattr(runs, "run_job", recorded)
    inputs = [{"video": str(tmp_path / "clip.mp4"), "prompt": "a red disc drifting slowly left over a gray gradient"}]
    for share in ((0, 2), (1, 2)):
        runs.run_cells(inputs, list(suite.cells), suite.seeds, suite.base, lambda video, index: {}, tmp_path / "runs",
                       registry, plugins, None, share=share)
    assert sorted(ran) == sorted((c.composition, seed) for c in suite.cells for seed in suite.seeds)  # each once

    files = bench_files(tmp_path / "bench")
    monkeypatch.setattr("evs_framework.bench.benchmark.suite_clips", lambda *args, **kwargs: None)
    with pytest.raises(EVSError, match=r"2 of 2 bench workers failed \(the first exited 2; its log: .*worker-0.log\); "
                                       r"the rows measured are kept in .*rows.jsonl: rerun the command to finish"):
        run_workers(suite, tmp_path / "bench", files, plugins, None, ["bench", str(tmp_path / "no_such_suite.yaml")], 2)
    assert "does not exist" in (tmp_path / "bench" / "workers" / "worker-0.log").read_text()
