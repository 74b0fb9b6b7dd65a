"""Start-up cost of commands that load no model: import time (`python -X importtime`) and wall time.

    python bench/startup.py [--repeats 5]

For each command, runs it in a fresh interpreter `--repeats` times and prints one JSON line with the median
wall seconds, the median total import seconds, the three slowest top-level imports of the last run, and
whether diffusers or transformers were imported (they should not be).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = (["models"], ["plugins"], ["--help"])
HEAVY = ("diffusers", "transformers", "huggingface_hub")


def top_level_imports(stderr: str) -> dict[str, float]:
    """Cumulative seconds of each import made at the top level of the program, from -X importtime's lines."""
    seconds = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("  ") and cumulative.strip().isdigit():
            seconds[name.strip()] = int(cumulative) / 1e6
    return seconds


def measure(command: list[str]) -> tuple[float, dict[str, float], list[str]]:
    started = time.perf_counter()
    script = ("import sys\nfrom evs_framework.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
              f"    print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", script, *command], capture_output=True, text=True)
    wall = time.perf_counter() - started
    heavy = next(line for line in done.stderr.splitlines() if line.startswith("HEAVY=")).removeprefix("HEAVY=")
    return wall, top_level_imports(done.stderr), [m for m in heavy.split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for command in COMMANDS:
        runs = [measure(command) for _ in range(args.repeats)]
        walls = [wall for wall, _, _ in runs]
        imports = [sum(seconds.values()) for _, seconds, _ in runs]
        slowest = sorted(runs[-1][1].items(), key=lambda item: -item[1])[:3]
        print(json.dumps({"command": "evs " + " ".join(command), "wall_s": round(statistics.median(walls), 3),
                          "import_s": round(statistics.median(imports), 3),
                          "slowest_imports": {name: round(s, 3) for name, s in slowest},
                          "heavy_imported": runs[-1][2]}), flush=True)


if __name__ == "__main__":
    main()
