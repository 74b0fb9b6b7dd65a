"""Running whole jobs on the tiny model zoo: outputs, sidecars, and failures that lose nothing."""

import json
import threading
import time

import attrs
import imageio.v2 as imageio
import pytest
import torch

from evs_framework import runner
from evs_framework.cli import main
from evs_framework.errors import EVSError, VideoError
from evs_framework.hookspecs import hookimpl
from evs_framework.io.vae import FrameCodec
from evs_framework.planner import make_plan
from evs_framework.runner import run_job
from evs_framework.spec import InputVideo, load_spec
from evs_plugins.animatediff import AnimateDiffBackend


def prepared(seed_config, tmp_path, plugins, registry, **changes):
    spec = load_spec(seed_config(**changes))
    spec = attrs.evolve(spec, output=attrs.evolve(spec.output, dir=tmp_path / "out"))
    return spec, make_plan(spec, registry, plugins)


def frame_count_and_size(path):
    with imageio.get_reader(path, format="FFMPEG") as reader:
        return reader.count_frames(), tuple(reader.get_meta_data()["size"])


def test_seed_example_runs_end_to_end(seed_config, tmp_path, plugins, registry, context):
    spec, plan = prepared(seed_config, tmp_path, plugins, registry)
    [result] = run_job(spec, plan, context, progress=False)
    assert result.error is None
    assert frame_count_and_size(result.output) == (8, (128, 96))  # 64x48 input, latents upscaled x2
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["unet_calls"] == {"idm": 60, "vdm": 2}  # 20 of them capture features for using_attn
    assert [s["unet_calls"] for s in sidecar["stages"]] == [24, 2, 16]
    assert sidecar["seed"] == 23 and sidecar["spec"]["models"]["idm"]["upscale"] == 2.0
    assert sidecar["versions"]["diffusers"] and sidecar["versions"]["torch"]
    assert (tmp_path / "out" / "ball.IDM_VDM_IDM.side_by_side.mp4").is_file()


def test_same_seed_same_output_and_rerun_skips(seed_config, tmp_path, plugins, registry, context):
    spec, plan = prepared(seed_config, tmp_path, plugins, registry)
    [first] = run_job(spec, plan, context, progress=False)
    frames = imageio.mimread(first.output)
    [again] = run_job(spec, plan, context, progress=False)
    assert again.skipped
    [redone] = run_job(spec, plan, context, progress=False, overwrite=True)
    assert all((a == b).all() for a, b in zip(frames, imageio.mimread(redone.output)))


def test_cli_run_reports_and_writes(seed_config, tmp_path, zoo, capsys):
    code = main(["run", str(seed_config()), "--weights-dir", str(zoo), "--output-dir", str(tmp_path / "cli"), "-q"])
    assert code == 0
    assert (tmp_path / "cli" / "ball.IDM_VDM_IDM.mp4").is_file()
    assert "1 of 1 video(s) done" in capsys.readouterr().out


def test_missing_and_corrupt_videos_are_refused_before_loading(seed_config, tmp_path, plugins, registry, context, clip_file):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 100)
    spec, plan = prepared(seed_config, tmp_path, plugins, registry, videos=[clip_file, tmp_path / "gone.mp4", corrupt],
                          prompts=["a", "b", "c"])
    with pytest.raises(VideoError) as caught:
        run_job(spec, plan, context, progress=False)
    message = str(caught.value)
    assert "2 input video(s)" in message and "gone.mp4 does not exist" in message and "cannot read video" in message
    assert not context._shared  # no model was loaded


@pytest.mark.parametrize("stage", ["compose_clip", "write_outputs"])
def test_a_failing_video_does_not_lose_the_others(seed_config, tmp_path, plugins, registry, context, clip_file,
                                                  monkeypatch, stage):
    spec, plan = prepared(seed_config, tmp_path, plugins, registry, videos=[clip_file] * 3, prompts=["a", "b", "c"])
    real = getattr(runner, stage)

    def fail_second(*args):
        if next(a for a in args if isinstance(a, InputVideo)).prompt == "b":
            raise EVSError("simulated failure")
        return real(*args)

    class Observer:  # the video_done hook sees every video, the failed one too
        def __init__(self):
            self.seen = []

        @hookimpl
        def video_done(self, result):
            self.seen.append(result.error)

    monkeypatch.setattr(runner, stage, fail_second)
    observer = Observer()
    context.plugins.manager.register(observer)
    try:
        results = run_job(spec, plan, context, progress=False)
    finally:
        context.plugins.manager.unregister(observer)
    assert [r.error for r in results] == [None, "simulated failure", None]
    assert sorted(map(str, observer.seen)) == ["None", "None", "simulated failure"]  # as each ends, in any order
    assert results[0].output.is_file() and results[2].output.is_file()
    assert results[0].output != results[2].output  # same video twice gets distinct names
    assert not list(spec.output.dir.glob(".*"))  # every lock given back, no partial file left


def test_the_next_video_is_read_and_the_last_written_while_one_composes(seed_config, tmp_path, plugins, registry,
                                                                       context, clip_file, monkeypatch):
    spec, plan = prepared(seed_config, tmp_path, plugins, registry, videos=[clip_file] * 3, prompts=["a", "b", "c"])
    events, lock = [], threading.Lock()

    def recorded(name, function, slow=0.0):
        def run(*args):
            item = next(a for a in args if isinstance(a, InputVideo))
            with lock:
                events.append(f"{name} {item.prompt} starts")
            time.sleep(slow)
            result = function(*args)
            with lock:
                events.append(f"{name} {item.prompt} ends")
            return result
        return run

    monkeypatch.setattr(runner, "read_clip", recorded("read", runner.read_clip))
    monkeypatch.setattr(runner, "compose_clip", recorded("compose", runner.compose_clip, slow=0.5))
    monkeypatch.setattr(runner, "write_outputs", recorded("write", runner.write_outputs))
    assert [r.error for r in run_job(spec, plan, context, progress=False)] == [None] * 3
    assert events.index("read b ends") < events.index("compose a ends")  # read ahead
    assert events.index("write a starts") < events.index("compose b ends")  # written behind
    assert events.index("write a ends") < events.index("write b starts")  # one write at a time


def test_nan_latents_name_the_op_and_sigma(seed_config, tmp_path, plugins, registry, context, monkeypatch):
    spec, plan = prepared(seed_config, tmp_path, plugins, registry)
    monkeypatch.setattr(AnimateDiffBackend, "predict", lambda self, x, t, text: torch.full_like(x, float("nan")))
    [result] = run_job(spec, plan, context, progress=False)
    assert result.output is None
    assert "op 5 (denoise vdm)" in result.error and "sigma 1.419" in result.error and "float32" in result.error
    assert not list((tmp_path / "out").glob("*.mp4"))


def test_missing_weights_list_the_places_searched(seed_config, tmp_path, plugins, registry, context):
    spec, plan = prepared(seed_config, tmp_path, plugins, registry)
    context.weights.folders = [tmp_path / "empty"]
    with pytest.raises(EVSError) as caught:
        run_job(spec, plan, context, progress=False)
    assert "weights for model 'EP'" in str(caught.value) and str(tmp_path / "empty" / "epiCRealism") in str(caught.value)


def test_vae_keeps_its_own_precision(plugins, registry, zoo):
    from evs_framework.loading import LoadContext, WeightSettings

    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.bfloat16, torch.float32)
    backend = context.load(registry.get("SD"))
    assert backend.parts.unet.dtype == torch.bfloat16 and backend.parts.text_encoder.dtype == torch.bfloat16
    assert backend.vae.dtype == torch.float32


def test_nan_pixels_from_a_float32_vae_do_not_blame_half_precision(seed_config, tmp_path, plugins, registry, context,
                                                                   monkeypatch):
    spec, plan = prepared(seed_config, tmp_path, plugins, registry)
    monkeypatch.setattr(FrameCodec, "decode", lambda codec, latents, chunk: torch.full((8, 3, 96, 128), float("nan")))
    [result] = run_job(spec, plan, context, progress=False)
    assert result.output is None and "NaN or infinite pixels" in result.error and "in float32" in result.error
    assert "--vae-dtype float32" not in result.error


def test_offloading_moves_each_model_to_the_device_only_while_it_works(seed_config, tmp_path, plugins, registry, zoo,
                                                                        monkeypatch):
    """On CPU the moves change nothing, so the output must equal a run without offloading; the order of the
    modules asked for shows the wiring: VAE, text encoder (EP's, which lightningEP shares), T2I UNet, motion UNet,
    T2I UNet, VAE."""
    from evs_framework.loading import LoadContext, WeightSettings
    from evs_framework.placement import Placement

    asked = []
    original_use = Placement.use
    monkeypatch.setattr(Placement, "use", lambda self, *modules: (asked.append(modules), original_use(self, *modules)))
    outputs = {}
    for offload in (False, True):
        context = LoadContext(plugins, registry, WeightSettings([zoo]), offload=offload)
        spec, plan = prepared(seed_config, tmp_path / str(offload), plugins, registry)
        [result] = run_job(spec, plan, context, progress=False)
        outputs[offload] = imageio.mimread(result.output)
    assert all((a == b).all() for a, b in zip(outputs[False], outputs[True]))

    idm, vdm = context.load(registry.get("EP")), context.load(registry.get("lightningEP"))
    distinct = [modules for i, modules in enumerate(asked) if i == 0 or modules != asked[i - 1]]
    run = distinct[len(distinct) // 2:]  # the second (offloading) run asks in the same order as the first
    assert vdm.text_encoder is idm.text_encoder
    assert [m for modules in run for m in modules] == [idm.vae, idm.text_encoder, idm.unet, vdm.unet, idm.unet, idm.vae]


def test_offload_keeps_only_the_modules_at_work_on_the_device():
    class Recorder(torch.nn.Module):
        def __init__(self, moves):
            super().__init__()
            self.moves = moves

        def to(self, device):
            self.moves.append((self, str(device)))
            return self

    from evs_framework.placement import Placement

    moves = []
    a, b, shared = Recorder(moves), Recorder(moves), Recorder(moves)
    placement = Placement(torch.device("cuda"), offload=True)
    assert placement.load_device == torch.device("cpu")
    placement.use(a, shared)
    placement.use(a, shared)  # already there: no move
    placement.use(b, shared)
    assert moves == [(a, "cuda"), (shared, "cuda"), (a, "cpu"), (b, "cuda"), (shared, "cuda")]
    assert Placement(torch.device("cuda")).load_device == torch.device("cuda")
