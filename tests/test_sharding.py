"""A job split over processes by `accelerate launch` (gloo on CPU): the same bytes as one process, a kill and a
resume with another process count losing nothing and doing nothing twice, and one report for the whole job."""

import json
import os
import signal
import subprocess
import sys
import time

import attrs
import pytest

from evs_framework.cli import main
from evs_framework.errors import VideoError
from evs_framework.io import video_io
from evs_framework.job_report import REPORT_NAME
from evs_framework.sharding import Shard, check_shared_folder
from evs_framework.testing.zoo import make_synthetic_clip

CLIPS = 32


@pytest.fixture(scope="module")
def job(tmp_path_factory, zoo):
    """A manifest of 32 small clips and a function writing a spec of it that outputs into a given folder."""
    folder = tmp_path_factory.mktemp("sharded")
    rows = []
    for i in range(CLIPS):
        video_io.write_video(folder / "clips" / f"c{i:02d}.mp4", make_synthetic_clip(8, 64, 48, seed=i), 8.0)
        rows.append(json.dumps({"video": f"clips/c{i:02d}.mp4", "prompt": f"ball {i}"}))
    (folder / "list.jsonl").write_text("\n".join(rows))

    def spec(out: str):
        path = folder / f"{out}.yaml"
        path.write_text(json.dumps({"inputs": {"manifest": "list.jsonl"},
                                    "models": {"idm": {"name": "EP"}, "vdm": {"name": "lightningEP"}},
                                    "settings": {"stable_steps": [5]},
                                    "output": {"dir": str(folder / out), "side_by_side": False}}))
        return path, folder / out

    return spec, zoo


@pytest.fixture(scope="module")
def lone_outputs(job):
    """The job run by one process: each output's bytes by file name."""
    spec, zoo = job
    path, out = spec("lone")
    assert main(["run", str(path), "--weights-dir", str(zoo), "-q"]) == 0
    return {p.name: p.read_bytes() for p in out.glob("*.mp4")}


def evs(*args, **popen):
    # each process gets the thread count of the lone run (conftest: OMP_NUM_THREADS=1), as --processes promises
    return subprocess.Popen([sys.executable, "-m", "evs_framework.cli", *args], **popen)


def report(out):
    return json.loads((out / REPORT_NAME).read_text())


def test_two_processes_write_what_one_writes_byte_for_byte(job, lone_outputs):
    spec, zoo = job
    path, out = spec("two")
    assert evs("run", str(path), "--weights-dir", str(zoo), "-q", "--processes", "2").wait(timeout=600) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.mp4")} == lone_outputs
    merged = report(out)
    assert merged["counts"] == {"written": CLIPS, "skipped": 0, "failed": 0, "busy": 0}
    assert [p["videos"] for p in merged["processes"]] == [CLIPS // 2, CLIPS // 2]
    assert len({p["pid"] for p in merged["processes"]}) == 2
    assert sorted(v["process"] for v in merged["videos"]) == [0] * (CLIPS // 2) + [1] * (CLIPS // 2)
    assert [v["source"].rsplit("/", 1)[1] for v in merged["videos"]] == [f"c{i:02d}.mp4" for i in range(CLIPS)]


def test_a_killed_job_resumes_with_another_process_count_without_losing_or_redoing(job, lone_outputs):
    spec, zoo = job
    path, out = spec("killed")
    launcher = evs("run", str(path), "--weights-dir", str(zoo), "-q", "--processes", "2", stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*.json"))) < 6:
        assert launcher.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.1)
    victim = next(int(lock.read_text().split()[0]) for lock in out.glob(".*.lock") if lock.read_text())
    os.kill(victim, signal.SIGKILL)  # a process in the middle of a video
    assert launcher.wait(timeout=120) != 0
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert 6 <= len(finished) < CLIPS

    assert evs("run", str(path), "--weights-dir", str(zoo), "-q", "--processes", "3").wait(timeout=600) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.mp4")} == lone_outputs
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished  # not done twice
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [REPORT_NAME] + [f"c{i:02d}.IDM_VDM_IDM.{ext}" for i in range(CLIPS) for ext in ("json", "mp4")])  # no leftovers
    resumed = report(out)
    assert resumed["counts"] == {"written": CLIPS - len(finished), "skipped": len(finished), "failed": 0, "busy": 0}
    assert len(resumed["processes"]) == 3
    assert {v["output"].rsplit("/", 1)[1] for v in resumed["videos"] if v["status"] == "skipped"} == set(finished)


def test_a_lone_run_reports_what_it_wrote_skipped_and_failed(job, monkeypatch):
    from evs_framework import runner

    spec, zoo = job
    path, out = spec("report")
    real = runner.compose_clip

    def failing_on_c03(spec_, plan, backends, context, item, *rest):
        if item.video.name == "c03.mp4":
            raise VideoError("c03 could not be decoded")
        return real(spec_, plan, backends, context, item, *rest)

    monkeypatch.setattr(runner, "compose_clip", failing_on_c03)
    lines = [json.dumps({"video": f"clips/c{i:02d}.mp4", "prompt": f"ball {i}"}) for i in range(4)]
    path.write_text(path.read_text().replace('"list.jsonl"', '"four.jsonl"'))
    (path.parent / "four.jsonl").write_text("\n".join(lines[:2]))
    assert main(["run", str(path), "--weights-dir", str(zoo), "-q"]) == 0
    (path.parent / "four.jsonl").write_text("\n".join(lines))
    assert main(["run", str(path), "--weights-dir", str(zoo), "-q"]) == 1
    written = report(out)
    assert [v["status"] for v in written["videos"]] == ["skipped", "skipped", "written", "failed"]
    assert written["videos"][3]["error"] == "c03 could not be decoded"
    assert written["videos"][2]["seconds"] > 0 and written["videos"][2]["process"] == 0
    assert written["counts"] == {"written": 1, "skipped": 2, "failed": 1, "busy": 0}
    assert written["processes"][0]["videos"] == 2 and written["processes"][0]["load_seconds"] > 0


@attrs.frozen
class TwoMachines(Shard):
    """Process 0 of two whose peer, on another machine, sees none of process 0's files."""

    def from_main(self, value):
        return value

    def gathered(self, values):
        return list(values) + [(False, "node-b (process 1)")]


def test_an_output_folder_not_shared_by_every_process_is_refused(tmp_path):
    with pytest.raises(VideoError, match=r"not shared by every process: node-b \(process 1\) cannot see"):
        check_shared_folder(TwoMachines(0, 2), tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe is gone


def test_processes_hands_the_rest_of_the_command_over(monkeypatch):
    from evs_framework import sharding

    handed = []
    monkeypatch.setattr(sharding.subprocess, "run", lambda command, env: handed.append((command, env)) or
                        subprocess.CompletedProcess(command, 0))
    assert main(["run", "job.yaml", "--processes", "4", "--threads", "3", "-q"]) == 0
    [(command, env)] = handed
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[command.index("-m", 3):] == ["-m", "evs_framework.cli", "run", "job.yaml", "--threads", "3", "-q"]
    assert env["OMP_NUM_THREADS"] == "3"
    assert main(["run", "job.yaml", "--processes", "0"]) == 2
