"""What a job did, for people and scripts: a progress bar over the whole job and `job-report.json`, which merges
every process's results (written, skipped, failed, with times) into one file in the output folder."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import attrs
from tqdm import tqdm

from evs_framework.io import video_io

REPORT_NAME = "job-report.json"
POLL_SECONDS = 1.0


@attrs.frozen
class ProcessSummary:
    """One process of the job: where it ran, how many videos it took, how long loading and the whole share took."""

    index: int
    host: str
    pid: int
    device: str
    videos: int
    load_seconds: float
    seconds: float

    @classmethod
    def this_process(cls, index: int, device, videos: int, load_seconds: float, seconds: float) -> ProcessSummary:
        return cls(index, socket.gethostname(), os.getpid(), str(device), videos, round(load_seconds, 3),
                   round(seconds, 3))


def status(result) -> str:
    """written, skipped (its outputs already matched), busy (a process outside this job held it) or failed."""
    return "failed" if result.error else "busy" if result.skip_reason else "skipped" if result.skipped else "written"


def job_report(config: str | None, composition: str, results: list, processes: list[ProcessSummary],
               started_at: float, seconds: float) -> dict:
    """The report's content; `results` are in input order, each with the index of the process that ran it."""
    videos = [{"source": str(r.source), "prompt": r.prompt, "status": status(r),
               "output": str(r.output) if r.output else None, "sidecar": str(r.sidecar) if r.sidecar else None,
               "seconds": round(r.seconds, 3), "process": r.process, "unet_calls": r.unet_calls,
               **({"error": r.error} if r.error else {}), **({"reason": r.skip_reason} if r.skip_reason else {})}
              for r in results]
    counts = {name: sum(v["status"] == name for v in videos) for name in ("written", "skipped", "failed", "busy")}
    written = [v["seconds"] for v in videos if v["status"] == "written"]
    return {
        "config": config,
        "composition": composition,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "seconds": round(seconds, 3),
        "counts": counts,
        "videos_per_hour": round(len(written) * 3600 / seconds, 1) if written and seconds > 0 else None,
        "processes": [attrs.asdict(p) for p in processes],
        "videos": videos,
    }


def write_job_report(folder: Path, report: dict) -> Path:
    return video_io.write_json(Path(folder) / REPORT_NAME, report)


class JobProgress:
    """A bar over the videos a job has to do. Alone, a process counts its own; in a launched job the main process
    counts the sidecars its peers write into the shared output folder, so its bar shows the whole job."""

    def __init__(self, sidecars: list[Path], enabled: bool, count_peers: bool):
        self.bar = tqdm(total=len(sidecars), desc="videos", unit="video", disable=None if enabled else True)
        self.sidecars, self.since = sidecars, time.time()
        self.stop = threading.Event()
        self.poller = None
        if count_peers and enabled and sidecars:
            self.poller = threading.Thread(target=self._poll, daemon=True)
            self.poller.start()

    @property
    def shown(self) -> bool:
        return not self.bar.disable

    def advance(self) -> None:
        if self.poller is None:
            self.bar.update(1)

    def _written(self) -> int:
        count = 0
        for path in self.sidecars:
            try:
                count += path.stat().st_mtime >= self.since
            except FileNotFoundError:
                pass
        return count

    def _poll(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            self.bar.n = self._written()
            self.bar.refresh()

    def close(self) -> None:
        self.stop.set()
        if self.poller is not None:
            self.poller.join()
            self.bar.n = self._written()
        self.bar.close()
