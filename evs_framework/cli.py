"""The `evs` command: plan, run, demo, sfi, eval, compare, bench, toyworld, fetch, plugins, models, ui."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import structlog

from evs_framework.errors import EVSError
from evs_framework.failures import failure
from evs_framework.logs import configure_logging
from evs_framework.paths import resolved
from evs_framework.plugins import describe, load_plugins
from evs_framework.registry import load_registry

log = structlog.get_logger("evs")
DTYPE_NAMES = ("bfloat16", "float16", "float32")
# Outputs differ in the last bits with the thread count (float sums in another order); a fixed count by default
# keeps runs on one machine reproducible, and `--threads` trades that for speed.
DEFAULT_THREADS = 2


def _positive(text: str) -> int:
    """An argument that counts something: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1")
    return value


def _names(text: str) -> list[str]:
    """A comma-separated list of names, at least one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give comma-separated names")
    return names


def _share(text: str) -> tuple[int, int]:
    """`I/N`: the I-th of N workers (from 0)."""
    index, _, count = text.partition("/")
    try:
        share = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give I/N, e.g. 0/4") from None
    if not 0 <= share[0] < share[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: I counts from 0 to N - 1")
    return share


def _seeds(text: str) -> list[int]:
    """Comma-separated noise seeds: non-negative integers, at least one."""
    try:
        seeds = [int(seed) for seed in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers, e.g. 23,24") from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are 0 or more")
    return seeds


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", action="append", default=[], metavar="YAML",
                        help="extra registry file; its entries replace same-named ones (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")


def _running(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights-dir", action="append", default=[], metavar="DIR",
                        help="folder holding model weights, searched before $EVS_WEIGHTS_DIR and ./pretrained_models")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"CPU threads for torch (default {DEFAULT_THREADS}, or $OMP_NUM_THREADS); outputs can differ "
                             f"in the last bits between thread counts, so keep it fixed to reproduce a run")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="model precision (default: float16 on GPU, float32 on CPU)")
    parser.add_argument("--vae-dtype", choices=DTYPE_NAMES, default=None,
                        help="VAE precision (default: float16 on GPU, float32 on CPU; a float16 VAE call that overflows "
                             "into NaN is done again in float32)")
    parser.add_argument("--compile", default=None, metavar="PARTS",
                        help="torch.compile the models once loaded: all, or a comma-separated choice of roles (idm, vdm, "
                             "... as the composition names them) and vae "
                             "(default none). The first run on a machine compiles (about a minute a model on an H200); "
                             "the compiled kernels are kept in $TORCHINDUCTOR_CACHE_DIR (default ~/.cache/evs/torch-compile) "
                             "and reused by later processes")
    parser.add_argument("--offload", action="store_true",
                        help="keep weights in CPU memory and move each model to the GPU only while it works "
                             "(for small GPUs; slower)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load .ckpt/.pt/.bin checkpoints (pickles can run code: only for files you trust)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where outputs go (overrides the spec)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evs", description="Compose text-to-image and text-to-video diffusion models "
                                                             "inside one denoising trajectory (EVS).")
    parser.add_argument("--version", action="version", version=f"evs {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="show the schedule a config runs, without loading weights")
    plan.add_argument("config", type=Path)
    plan.add_argument("--allow-missing", action="store_true",
                      help="show the plan even when input videos or weight files are missing (they are listed as warnings)")
    # no abbreviations: --processes is taken off the command line it hands over
    run = commands.add_parser("run", help="run a config (original EVS JSON or native YAML/JSON spec)", allow_abbrev=False)
    run.add_argument("config", type=Path)
    run.add_argument("--overwrite", action="store_true", help="redo videos whose outputs already match the spec")
    run.add_argument("--processes", type=int, default=None, metavar="N",
                     help="split the videos over N processes on this machine, one GPU each (hands the same command "
                          "over to `accelerate launch`; across machines, use accelerate launch itself: README)")
    demo = commands.add_parser("demo", help="EVS repairing a degraded toy-world clip with the small models that ship "
                                            "with EVS (no download; a CPU is enough)")
    fetch = commands.add_parser("fetch", help="download models from the Hugging Face Hub (the only command that uses the network)")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    sfi = commands.add_parser("sfi", help="Selective Feature Injection on its own (the original's SFI.py): generate "
                                          "for a prompt with the layout and motion of a source video")
    sfi.add_argument("video", type=Path, help="the source video whose self-attention features are injected")
    sfi.add_argument("--prompt", required=True, help="what to generate")
    sfi.add_argument("--model", default="EP", help="text-to-image model (a registry name; default EP)")
    sfi.add_argument("--strength", type=float, default=1.0,
                     help="fraction of the model's schedule to run from the noised source (default 1.0: from pure noise)")
    sfi.add_argument("--steps", type=int, default=None, help="the model's step count (default: its preset's)")
    sfi.add_argument("--features", choices=("kv", "attention_maps"), default="kv")
    sfi.add_argument("--layers", nargs="+", default=None, metavar="PATTERN",
                     help="fnmatch patterns of self-attention module names (default: the decoder's middle resolutions)")
    sfi.add_argument("--window", nargs=2, type=float, default=None, metavar=("START", "END"),
                     help="fraction of the steps that receive features (default 0 0.5)")
    sfi.add_argument("--seed", type=int, default=23)
    evaluate = commands.add_parser("eval", help="score outputs and their source clips; write metrics.json and metrics.csv")
    evaluate.add_argument("outputs", nargs="+", type=Path, metavar="OUTPUT.mp4")
    evaluate.add_argument("--metrics", default=None, help="comma-separated metric names (default: every loaded one)")
    evaluate.add_argument("--weights", type=Path, default=None, metavar="YAML",
                          help="weight files for the network metrics (dino_vitb16, clip_vit_b32, clip_vit_l14, "
                               "laion_aesthetic_head: paths); never downloaded")
    evaluate.add_argument("--vbench", default=None, metavar="DIMENSIONS",
                          help="also run the real VBench (its own environment) for these comma-separated dimensions")
    evaluate.add_argument("--vbench-python", type=Path, default=Path(".vbench/bin/python"),
                          help="the VBench environment's python (default .vbench/bin/python)")
    evaluate.add_argument("--vbench-cache", type=Path, default=Path("~/.cache/vbench").expanduser(),
                          help="VBENCH_CACHE_DIR, holding its weights (default ~/.cache/vbench)")
    evaluate.add_argument("--torch-home", type=Path, default=Path("~/.cache/torch").expanduser(),
                          help="TORCH_HOME, holding hub/checkpoints/dino_vitbase16_pretrain.pth")
    evaluate.add_argument("--report-dir", type=Path, default=None,
                          help="where metrics.json and metrics.csv go (default: the first output's folder)")
    comparing = commands.add_parser("compare", help="run several compositions on the same inputs and seed; write a "
                                                    "table, a labelled side-by-side video and a contact sheet")
    comparing.add_argument("config", type=Path)
    comparing.add_argument("--compositions", type=_names, default="IDM,VDM,IDM_VDM_IDM,basic",
                           help="comma-separated composition names (default: IDM,VDM,IDM_VDM_IDM,basic)")
    comparing.add_argument("--weights", type=Path, default=None, metavar="YAML", help="as for `evs eval`")
    bench = commands.add_parser("bench", help="run a suite file: compositions of any registry models on its clips, "
                                              "each run measured; write results.json, report.md (95%% intervals, "
                                              "paired differences) and pareto.png")
    bench.add_argument("suite", type=Path, help="a suite file (YAML), e.g. bench/suites/toy_enhance.yaml")
    bench.add_argument("--input", type=Path, default=None, metavar="MANIFEST",
                       help="a .csv or .jsonl manifest of video,prompt rows to run on instead of the suite's inputs")
    bench.add_argument("--out", type=Path, default=None,
                       help="where clips, outputs and results go (default outputs/bench/<suite name>); rows already "
                            "in its rows.jsonl under the same models and settings are not run again")
    toyworld = commands.add_parser("toyworld", help="the toy world's evidence: compositions on held-out clips measured "
                                                    "against their clean ground truth")
    toy_commands = toyworld.add_subparsers(dest="toy_command", required=True)
    toy_eval = toy_commands.add_parser("eval", help="every composition on held-out clips; a table with 95% intervals "
                                                    "(the suite bench/suites/toy_enhance.yaml, or toy_enhance_vc2.yaml)")
    toy_eval.add_argument("--input", choices=("degraded", "vc2"), default="degraded",
                          help="degraded: held-out clips degraded from their truth, measured against it (default); "
                               "vc2: clips the VideoCrafter-2 analogue (toyVC) draws from their prompts, measured "
                               "without a reference")
    toy_eval.add_argument("--compositions", type=_names, default=None,
                          help="comma-separated (default: the suite's: IDM, VDM, basic, IDM_VDM, VDM_IDM, IDM_VDM_IDM, "
                               "IV_mixed, videoelevator)")
    toy_sweep = toy_commands.add_parser("sweep", help="IDM_VDM_IDM with one knob changed at a time "
                                                      "(the suite bench/suites/toy_sweep.yaml)")
    toy_sweep.add_argument("--knob", action="append", default=[], metavar="NAME=V1,V2",
                           help="a setting and its values, e.g. stable_num=1,2,3 (repeatable; default: the suite's four)")
    toy_edit = toy_commands.add_parser("edit", help="prompts that change the shape's colour, measured against the "
                                                    "recoloured clip (bench/suites/toy_edit.yaml, or toy_real_edit.yaml)")
    toy_edit.add_argument("--input", choices=("degraded", "clean"), default="degraded",
                          help="degraded: the edit task on degraded clips (default); clean: real_edit on clean ones, "
                               "without and with Selective Feature Injection")
    for sub, clips in ((toy_eval, 32), (toy_sweep, 16), (toy_edit, 16)):
        # each takes its defaults from its suite; a flag given replaces the suite's value
        sub.add_argument("--clips", type=_positive, default=None, help=f"held-out clips (default {clips})")
        sub.add_argument("--seeds", type=_seeds, default=None,
                         help="noise seeds, comma-separated (default " + ("23)" if sub is toy_sweep else "23,24)"))
        sub.add_argument("--out", type=Path, default=Path("outputs/toyworld"), help="where clips, outputs and results go")
    for sub in (toy_eval, toy_sweep, toy_edit, bench):
        _common(sub)
        _running(sub)
        sub.add_argument("--workers", type=_positive, default=1, metavar="N",
                         help="processes that share the rows (on one device: a GPU a toy model leaves mostly idle "
                              "gets through a suite about N times faster); the clips are made once, first")
        sub.add_argument("--worker", type=_share, default=None, help=argparse.SUPPRESS)  # I/N: one worker's share
    ui = commands.add_parser("ui", help="a local web app: pick a clip, models and a composition, see the plan, run "
                                        "it with progress, compare runs (needs gradio: pip install -e '.[ui]')")
    ui.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=7860, help="default 7860")
    commands.add_parser("plugins", help="list loaded plugins and what each provides")
    models = commands.add_parser("models", help="list the registry's models and whether their weights are here")
    models.add_argument("--weights-dir", action="append", default=[], metavar="DIR",
                        help="folder holding model weights, searched before $EVS_WEIGHTS_DIR and ./pretrained_models")
    for sub in (plan, run, demo, sfi, evaluate, comparing, fetch, commands.choices["plugins"], commands.choices["models"],
                ui):
        _common(sub)
    for sub in (plan, run, demo, sfi, comparing, ui):  # plan reads configs and sizes for the same weights, dtype and device
        _running(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evs-framework")
    except PackageNotFoundError:  # a checkout on the path, not installed
        return "(not installed)"


def _threads(args) -> int:
    return args.threads or int(os.environ.get("OMP_NUM_THREADS") or DEFAULT_THREADS)


def _handed_over(args, option: str = "--processes") -> list[str]:
    """The command line of this run without `option` (and its value), for the processes that run it."""
    argv, kept, skip = args.argv, [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept


def _context_options(args) -> dict:
    """api.load_context's options as the flags give them; sets torch's thread count (`--threads`)."""
    import torch

    from evs_framework.acceleration import parse_compile_parts

    if args.threads is not None and args.threads < 1:
        raise EVSError(f"--threads {args.threads}: give at least 1")
    torch.set_num_threads(_threads(args))
    return {"device": args.device, "dtype": args.dtype, "vae_dtype": args.vae_dtype, "weights_dirs": args.weights_dir,
            "allow_pickle": args.allow_pickle, "offload": args.offload, "compile": parse_compile_parts(args.compile)}


def _context(args, plugins, registry):
    from evs_framework.api import load_context

    return load_context(plugins, registry, **_context_options(args))


def prepare_job(args, plugins, registry, parsed=None, source: str | None = None, allow_missing: bool = False):
    """api.prepare_job for `args.config` (or `parsed`) with the flags' options."""
    from evs_framework.api import prepare_job as prepare

    return prepare(parsed or args.config, plugins=plugins, registry=registry, allow_missing=allow_missing,
                   output_dir=getattr(args, "output_dir", None), source=source or str(args.config),
                   **_context_options(args))


def _report(results, started: float) -> int:
    failed = [r for r in results if r.error]
    elsewhere = [r for r in results if r.skip_reason]  # another evs process holds their locks
    for r in results:
        if r.skip_reason:
            print(f"{r.source.name}: skipped ({r.skip_reason})")
            continue
        state = "skipped (already done)" if r.skipped else "FAILED" if r.error else f"{r.seconds:.1f} s"
        print(f"{r.source.name}: {state} -> {r.output if not r.error else r.error}")
    left = f", {len(elsewhere)} left to other evs processes" if elsewhere else ""
    print(f"{len(results) - len(failed) - len(elsewhere)} of {len(results)} video(s) done in "
          f"{time.perf_counter() - started:.1f} s{left}")
    return 1 if failed else 0


def cmd_plan(args, plugins, registry) -> int:
    from evs_framework.context_windows import framed
    from evs_framework.plan_text import format_plan
    from evs_framework.preflight import input_lengths

    job = prepare_job(args, plugins, registry, allow_missing=args.allow_missing)
    print(format_plan(job.plan, str(args.config)))
    own = {settings: plan for settings, plan in job.plans.items() if settings is not None}
    for settings, plan in own.items():  # videos whose manifest row changes their settings run plans of their own
        names = ", ".join(item.video.name for item in job.spec.inputs if item.settings == settings)
        print(f"\nvideos with their own settings ({names}):\n{format_plan(plan)}")
    windowed = {}  # videos longer than a motion model's context: their calls counted for their length
    for item, frames in input_lengths(job.spec).items():
        plan = framed(job.plans[item.settings], frames)
        if plan.frames:
            windowed.setdefault((item.settings, frames), (plan, []))[1].append(item.video.name)
    for plan, names in windowed.values():
        print(f"\nvideos run in context windows ({', '.join(names)}):\n{format_plan(plan)}")
    print(f"inputs: {len(job.spec.inputs)} video(s), up to {job.spec.video.max_frames or 'all'} frames each"
          + (f"; {sum(item.settings is not None for item in job.spec.inputs)} with their own settings" if own else ""))
    for problem in job.missing:
        print(f"warning (--allow-missing): {problem}")
    return 0


def cmd_run(args, plugins, registry) -> int:
    from evs_framework.runner import run_job
    from evs_framework.sharding import join_job, launch

    if args.processes is not None and args.processes != 1:
        import torch

        on_cpu = args.device == "cpu" or not torch.cuda.is_available()
        return launch(args.processes, _handed_over(args), _threads(args), on_cpu)
    started = time.perf_counter()
    job = prepare_job(args, plugins, registry)
    shard = join_job(job.context.device)
    if shard.count > 1:
        structlog.contextvars.bind_contextvars(process=shard.index)
    log.info("plan_ready", composition=job.plan.composition, videos=len(job.spec.inputs))
    results = run_job(job.spec, job.plan, job.context, progress=not args.quiet, overwrite=args.overwrite, shard=shard,
                      config=str(args.config))
    if not shard.is_main:  # the main process reports the whole job
        return 1 if any(r.error for r in results) else 0
    return _report(results, started)


def cmd_demo(args, plugins, registry) -> int:
    from evs_framework.demo import run_demo

    started = time.perf_counter()
    out_dir = resolved(args.output_dir or Path("outputs/demo"))
    shown = run_demo(out_dir, registry, plugins, _context(args, plugins, registry), progress=not args.quiet)
    print(f"input: {shown['input']} (drawn by the VideoCrafter-2 analogue toyVC from a held-out prompt)\n"
          f"prompt: {shown['prompt']}\n\n"
          f"measured without a reference (one clip and seed; `evs toyworld eval --input vc2` gives intervals):\n"
          f"{shown['table']}\n\nEVS output: {shown['output']}\n"
          f"side by side (input | EVS): {shown['side_by_side']}\n"
          f"every composition, every third frame: {shown['contact_sheet']}\n"
          f"demo done in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_sfi(args, plugins, registry) -> int:
    from evs_framework.plan_text import format_plan
    from evs_framework.runner import run_job
    from evs_framework.spec import parse_spec

    started = time.perf_counter()
    injection = {"features": args.features,
                 **({"layers": args.layers} if args.layers else {}), **({"window": args.window} if args.window else {})}
    parsed = parse_spec({
        "inputs": [{"video": str(args.video), "prompt": args.prompt}],
        "models": {"idm": {"name": args.model, **({"steps": args.steps} if args.steps else {})}},
        "composition": "IDM",
        "settings": {"idm_invert_mode": "random", "idm_inverse_strength": args.strength},
        "using_attn": True, "injection": injection, "seed": args.seed,
        "output": {"dir": str(args.output_dir or Path("outputs") / "sfi")},
    }, source="evs sfi arguments")
    job = prepare_job(args, plugins, registry, parsed, "evs sfi arguments")
    print(format_plan(job.plan, "sfi"))
    return _report(run_job(job.spec, job.plan, job.context, progress=not args.quiet, overwrite=True), started)


def cmd_eval(args, plugins, registry) -> int:
    from evs_framework.evaluation.evaluate import choose_metrics, evaluate, format_table, write_reports

    from evs_framework.evaluation.metrics import load_weight_paths

    weights = load_weight_paths(args.weights) if args.weights else None
    metrics = choose_metrics(plugins, args.metrics.split(",") if args.metrics else None, weights)
    if args.vbench:
        from evs_framework.evaluation.vbench_extra import VBenchSetup, preflight

        setup = VBenchSetup(args.vbench_python, args.vbench_cache, args.torch_home)
        dimensions = [d.strip() for d in args.vbench.split(",") if d.strip()]
        preflight(setup, dimensions)  # before any scoring: a missing file is known at once
    data = evaluate(args.outputs, metrics, progress=not args.quiet)
    if args.vbench:
        from evs_framework.evaluation.evaluate import add_vbench

        add_vbench(data, setup, dimensions)
    print(format_table(data))
    for path in write_reports(data, args.report_dir or args.outputs[0].parent):
        print(f"wrote {path}")
    return 0


def cmd_compare(args, plugins, registry) -> int:
    from evs_framework.evaluation.compare import compare, format_comparison
    from evs_framework.evaluation.metrics import load_weight_paths

    job = prepare_job(args, plugins, registry)
    names = args.compositions
    weights = load_weight_paths(args.weights) if args.weights else None
    data = compare(job.spec, names, registry, plugins, job.context, not args.quiet, weights)
    for entry in data["inputs"]:
        print(f"{entry['source']}:\n{format_comparison(entry, names)}\n"
              f"side by side: {entry['side_by_side']}\ncontact sheet: {entry['contact_sheet']}")
    return 0


def cmd_fetch(args, plugins, registry) -> int:
    from evs_framework.fetch import fetch, hub_unreachable
    from evs_framework.loading import default_weight_folders

    unknown = []
    for name in args.names:
        try:
            registry.get(name)
        except EVSError as exc:
            unknown.append(str(exc))
    if unknown:
        raise EVSError("\n".join(unknown))
    unreachable = hub_unreachable() if any(registry.get(name).weights.hub for name in args.names) else None
    failed = []
    for name in args.names:
        try:
            print(f"{name}: {fetch(registry.get(name), default_weight_folders()[0], unreachable)}")
        except EVSError as exc:
            failed.append(str(exc))
    if failed:
        raise EVSError(f"{len(failed)} of {len(args.names)} model(s) not fetched:\n" + "\n".join(f"  - {f}" for f in failed))
    return 0


def cmd_bench(args, plugins, registry) -> int:
    from evs_framework.bench.benchmark import bench_files
    from evs_framework.bench.suite import load_suite

    overrides = {"inputs": {"manifest": str(resolved(args.input))}} if args.input else {}
    suite = load_suite(args.suite, registry, plugins, overrides)
    out_dir = resolved(args.out or Path("outputs/bench") / args.suite.stem)
    return _bench(suite, out_dir, bench_files(out_dir), args, plugins, registry)


def _bench(suite, out_dir: Path, files, args, plugins, registry, notes=None) -> int:
    """Run `suite` (in `--workers` processes, each taking its share of the rows), print its report (with
    `notes(rows)` added to it) and say where its files are."""
    from evs_framework.bench.benchmark import run_suite, run_workers
    from evs_framework.io import video_io

    context = _context(args, plugins, registry)
    if args.worker is not None:
        run_suite(suite, out_dir, files, registry, plugins, context, share=args.worker, made=True)
        return 0
    if args.workers > 1:
        run_workers(suite, out_dir, files, plugins, context, _handed_over(args, "--workers"), args.workers)
    record = run_suite(suite, out_dir, files, registry, plugins, context, progress=not args.quiet,
                       made=args.workers > 1)
    if notes:
        video_io.write_text(files.report, files.report.read_text(encoding="utf-8") + notes(record["rows"]))
    print(files.report.read_text(encoding="utf-8"))
    for path in (files.results, files.report, files.pareto, files.rows):
        print(f"wrote {path}")
    return 0


# (toyworld command, --input) -> the shipped suite it runs and the kind of clips that suite takes
TOY_SUITES = {("eval", "degraded"): ("toy_enhance", "degraded"), ("eval", "vc2"): ("toy_enhance_vc2", "vc2"),
              ("sweep", "degraded"): ("toy_sweep", "degraded"), ("edit", "degraded"): ("toy_edit", "edit"),
              ("edit", "clean"): ("toy_real_edit", "real_edit")}


def _toy_suite(args, plugins, registry):
    """The shipped suite `evs toyworld eval/sweep/edit` runs, with the flags given in place of its values."""
    import yaml

    from evs_framework.bench.suite import SHIPPED_SUITES, load_suite

    name, kind = TOY_SUITES[args.toy_command, getattr(args, "input", "degraded")]
    overrides = {}
    if args.clips is not None:
        overrides["inputs"] = {"toyworld": {"clips": args.clips, "kind": kind}}
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if getattr(args, "compositions", None):
        overrides["compositions"] = args.compositions
        overrides["baseline"] = "IDM" if "IDM" in args.compositions else None  # None: the first composition
    if getattr(args, "knob", None):
        knobs = [item.partition("=") for item in args.knob]
        overrides["grid"] = [{knob.strip(): [yaml.safe_load(v) for v in values.split(",")]} for knob, _, values in knobs]
        overrides["baseline"] = None  # the first row: the suite's baseline may be no row of the knobs given
    return load_suite(SHIPPED_SUITES / f"{name}.yaml", registry, plugins, overrides)


def cmd_toyworld(args, plugins, registry) -> int:
    from evs_framework.bench.benchmark import bench_files
    from evs_framework.toyworld import experiment

    out_dir = resolved(args.out)
    # what the results are written as: each input's apart (eval on drawn inputs, real_edit on clean ones)
    stem = {("eval", "vc2"): "eval_vc2", ("edit", "clean"): "real_edit"}.get(
        (args.toy_command, getattr(args, "input", None)), args.toy_command)
    claims = (lambda rows: "\n## The method's claims\n\n" + experiment.format_claims(experiment.claims(rows)) + "\n"
              ) if args.toy_command == "eval" else None
    return _bench(_toy_suite(args, plugins, registry), out_dir, bench_files(out_dir, stem), args, plugins, registry,
                  claims)


def cmd_plugins(args, plugins, registry) -> int:
    rows = describe(plugins)
    name_width, section_width = (max(len(row[i]) for row in rows) for i in (0, 1))
    for name, section, provided in rows:
        print(f"{name:{name_width}}  {section:{section_width}}  {', '.join(provided)}")
    return 0


def cmd_models(args, plugins, registry) -> int:
    from evs_framework.api import load_context
    from evs_framework.errors import WeightsError
    from evs_framework.preflight import weight_path

    context = load_context(plugins, registry, device="cpu", weights_dirs=args.weights_dir)
    kinds = plugins.catalogue.names("backends")
    aliases: dict[str, list[str]] = {}  # a plugin's model is listed once, under `plugin:name`, with its bare name
    for key, entry in registry.entries.items():
        if key != entry.name:
            aliases.setdefault(entry.name, []).append(key)
    entries = [entry for key, entry in registry.entries.items() if key == entry.name]
    name_width = max(len(entry.name) for entry in entries)
    for entry in entries:
        missing = "" if entry.kind in kinds else f"  (no loaded plugin provides kind {entry.kind!r} yet)"
        if entry.name in aliases:
            missing += f"  (also named {', '.join(aliases[entry.name])})"
        try:
            where = weight_path(entry, context)
            weights = f"weights here: {where}" if where else "no weight files"
        except WeightsError:
            weights = f"weights missing: {entry.weights.local} (`evs plan` on a spec naming it says where to put them)"
        print(f"{entry.name:{name_width}} {entry.type} {entry.kind:12} base={entry.base or '-':4} "
              f"{entry.description}{missing}\n{'':{name_width}} {weights}")
    return 0


def cmd_ui(args, plugins, registry) -> int:
    try:
        import gradio  # noqa: F401 - an optional dependency: say how to get it before anything starts
    except ImportError:
        raise EVSError("`evs ui` needs gradio, which is not installed; pip install -e '.[ui]'") from None
    from evs_framework.ui.app import serve
    from evs_framework.ui.framework import open_workbench

    bench = open_workbench(plugins, registry, _context_options(args))
    serve(bench, resolved(args.output_dir or Path("outputs/ui")), args.host, args.port, _run_flags(args))
    return 0


def _run_flags(args) -> str:
    """The flags of `evs run` that make its outputs those of this command's runs (the same models, device,
    precision and thread count)."""
    flags = [f"--{name.replace('_', '-')} {value}" for name in ("device", "dtype", "vae_dtype", "threads", "compile")
             if (value := getattr(args, name)) is not None]
    flags += [f"--weights-dir {folder}" for folder in args.weights_dir] + [f"--registry {file}" for file in args.registry]
    return " ".join(flags + [f"--{name.replace('_', '-')}" for name in ("offload", "allow_pickle") if getattr(args, name)])


COMMANDS = {"plan": cmd_plan, "run": cmd_run, "demo": cmd_demo, "sfi": cmd_sfi, "eval": cmd_eval,
            "compare": cmd_compare, "fetch": cmd_fetch, "bench": cmd_bench, "toyworld": cmd_toyworld,
            "plugins": cmd_plugins, "models": cmd_models, "ui": cmd_ui}


INTERRUPTED = "interrupted; finished videos are kept, rerun the same command to continue"


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """A SIGTERM (`kill`, a job scheduler) stops a command the way Ctrl-C does, so partial files are removed and
    locks released on the way out."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_writing() -> None:
    """Points stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe a second time."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(-1 if args.quiet else args.verbose)
    plugins = None
    try:
        with _sigterm_as_interrupt():
            plugins = load_plugins()
            registry = load_registry(args.registry, plugins)
            return COMMANDS[args.command](args, plugins, registry)
    except EVSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BrokenPipeError:  # whatever read the output stopped reading (`evs models | head`)
        _stop_writing()
        return 0
    except Exception as exc:  # a fault no check caught: one line naming where, the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        modules = plugins.catalogue.modules if plugins is not None else {}
        print(f"error: {failure(exc, modules, f'running evs {args.command}')}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
