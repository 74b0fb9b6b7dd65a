"""One job over several processes started by `accelerate launch` (or torchrun): which videos each takes, and the
few messages they exchange.

The launcher sets WORLD_SIZE, RANK and LOCAL_RANK; accelerate's PartialState joins its process group (NCCL between
GPUs, gloo on CPUs). The main process decides which videos are still to do and every process takes every N-th of
them, so a resumed job is split evenly whatever the process count. Nothing else crosses processes until the end,
where every process's results are gathered into one job report. A video's output depends only on the video and the
spec (identity.video_seed), never on which process ran it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import attrs
import structlog
import torch

from evs_framework.errors import EVSError, VideoError

log = structlog.get_logger(__name__)
# A process that finished its share waits for the others at the final gather; a share can take hours.
GATHER_TIMEOUT = timedelta(days=7)


def launched_processes() -> int:
    """How many processes the launcher started for this job (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_device_name(name: str) -> str:
    """The device of this process in a launched job: `cuda` means the GPU of its local rank."""
    if launched_processes() > 1 and name == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return name


@attrs.frozen
class Shard:
    """This process's place in the job: process `index` of `count`."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, work: list) -> list:
        """This process's share of `work`, a list every process holds in the same order."""
        return work[self.index::self.count]

    def from_main(self, value):
        """The main process's `value`, in every process."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def gathered(self, values: list) -> list:
        """Every process's `values`, concatenated in process order, in every process."""
        if self.count == 1:
            return list(values)
        from accelerate.utils import gather_object

        return gather_object(list(values))


def join_job(device: torch.device) -> Shard:
    """This process's shard; in a launched job, joins the launcher's process group first."""
    if launched_processes() == 1:
        return Shard()
    from accelerate import PartialState

    state = PartialState(cpu=device.type != "cuda", timeout=GATHER_TIMEOUT)
    return Shard(state.process_index, state.num_processes)


def check_shared_folder(shard: Shard, folder: Path) -> None:
    """Every process sees the same output folder: what one has written is what the others skip. A file the main
    process writes must be visible to all (a folder local to each machine is refused)."""
    if shard.count == 1:
        return
    probe = folder / f".evs-shared-check.{os.getpid()}.partial"
    if shard.is_main:
        probe.write_text(socket.gethostname())
    probe = Path(shard.from_main(str(probe)))
    unseen = [place for seen, place in shard.gathered([(probe.is_file(), f"{socket.gethostname()} "
                                                                       f"(process {shard.index})")]) if not seen]
    if shard.is_main:
        probe.unlink(missing_ok=True)
    if unseen:
        raise VideoError(f"the output folder {folder} is not shared by every process: {', '.join(unseen)} cannot see "
                         f"what the main process writes there; put output.dir on a file system every machine mounts "
                         f"at the same path")


def launch(processes: int, argv: list[str], threads: int, on_cpu: bool) -> int:
    """`evs run --processes N`: the same command, without --processes, under `accelerate launch` with N processes
    on this machine (one GPU each where there are GPUs); the launcher's exit code. `threads` is every process's torch
    thread count, the one a lone process would use, so that outputs match a lone run's to the bit."""
    if processes < 1:
        raise EVSError(f"--processes {processes}: give at least 1")
    cores = os.cpu_count() or 1
    if on_cpu and processes * threads > cores:
        log.warning("cpu_oversubscribed", processes=processes, threads=threads, cores=cores,
                    fix=f"--threads {max(1, cores // processes)} fits the cores (outputs may then differ from a "
                        f"{threads}-thread run in the last bits)")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
               "--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", *(["--multi_gpu"] if processes > 1 else []), "-m", "evs_framework.cli", *argv]
    code = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
    if code:
        print(f"error: the job's processes ended with exit code {code}; finished videos are kept, and running the "
              f"same command again (with any --processes) finishes the job", file=sys.stderr)
    return code
