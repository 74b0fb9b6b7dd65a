"""A rerun skips a video only when nothing its pixels depend on changed; the sidecar says what that was."""

import json
import os
import shutil

import attrs
import torch

from evs_framework.io import video_io
from evs_framework.identity import weight_fingerprints
from evs_framework.planner import make_plan
from evs_framework.runner import run_job, video_identity
from evs_framework.spec import load_spec
from evs_framework.testing.zoo import make_synthetic_clip


def idm_only(seed_config, tmp_path, plugins, registry, clip):
    """A cheap job: the T2I model alone, 4 of its steps, on `clip`."""
    spec = load_spec(seed_config(videos=[clip], pipeline_mode="IDM", using_attn=False, idm_type="SD",
                                 idm_inverse_strength=0.08, stable_steps=[0]))
    spec = attrs.evolve(spec, output=attrs.evolve(spec.output, dir=tmp_path / "out", side_by_side=False))
    return spec, make_plan(spec, registry, plugins)


def key(spec, plan, context):
    return video_identity(spec, spec.inputs[0], weight_fingerprints(plan, context), context).key


def test_the_key_covers_precision_device_input_and_weights(seed_config, tmp_path, plugins, registry, context, zoo):
    clip = shutil.copy(video_io.write_video(tmp_path / "a.mp4", make_synthetic_clip(4, 32, 24), 8.0), tmp_path / "b.mp4")
    spec, plan = idm_only(seed_config, tmp_path, plugins, registry, clip)
    base = key(spec, plan, context)
    assert key(spec, plan, context) == base  # stable when nothing changed
    assert key(spec, plan, attrs.evolve(context, dtype=torch.bfloat16)) != base
    assert key(spec, plan, attrs.evolve(context, vae_dtype=torch.float16)) != base
    assert key(spec, plan, attrs.evolve(context, device=torch.device("meta"))) != base

    video_io.write_video(clip, make_synthetic_clip(4, 32, 24, seed=3), 8.0)  # same path, new content
    assert key(spec, plan, context) != base

    changed = key(spec, plan, context)
    weights_file = zoo / "stable-diffusion-v1-5" / "unet" / "config.json"
    stat = weights_file.stat()
    os.utime(weights_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert key(spec, plan, context) != changed
    finally:
        os.utime(weights_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_changed_input_at_the_same_path_is_redone(seed_config, tmp_path, plugins, registry, context):
    clip = video_io.write_video(tmp_path / "clip.mp4", make_synthetic_clip(4, 32, 24), 8.0)
    spec, plan = idm_only(seed_config, tmp_path, plugins, registry, clip)
    [first] = run_job(spec, plan, context, progress=False)
    [again] = run_job(spec, plan, context, progress=False)
    assert not first.skipped and again.skipped
    video_io.write_video(clip, make_synthetic_clip(4, 32, 24, seed=3), 8.0)
    [kept] = run_job(spec, plan, context, progress=False)  # the earlier output is not replaced without a word
    assert "input_sha256" in kept.error and "--overwrite" in kept.error
    [redone] = run_job(spec, plan, context, progress=False, overwrite=True)
    assert not redone.skipped and redone.error is None

    sidecar = json.loads(redone.sidecar.read_text())
    identity = sidecar["identity"]
    assert identity["dtype"] == "float32" and identity["device_type"] == "cpu"
    assert len(identity["input_sha256"]) == 64
    sd = identity["weights"]["SD"]
    assert sd["path"].endswith("stable-diffusion-v1-5")
    assert ["unet/diffusion_pytorch_model.safetensors"] == [f[0] for f in sd["files"] if f[0].startswith("unet/diff")]
    assert [op["index"] for op in sidecar["ops"]] == list(range(1, len(sidecar["ops"]) + 1))
    assert sidecar["ops"][0]["stage"] == sidecar["stages"][0]["stage"] == 1


def test_a_finished_output_of_other_settings_is_kept_unless_overwritten(seed_config, tmp_path, plugins, registry,
                                                                         context):
    first_clip = video_io.write_video(tmp_path / "first.mp4", make_synthetic_clip(4, 32, 24), 8.0)
    spec, plan = idm_only(seed_config, tmp_path, plugins, registry, first_clip)
    [made] = run_job(spec, plan, context, progress=False)
    before = made.output.read_bytes(), made.sidecar.read_bytes()

    second_clip = video_io.write_video(tmp_path / "second.mp4", make_synthetic_clip(4, 32, 24, seed=5), 8.0)
    reseeded = attrs.evolve(spec, seed=spec.seed + 1, inputs=(*spec.inputs, attrs.evolve(spec.inputs[0], video=second_clip)))
    kept, second = run_job(reseeded, plan, context, progress=False)
    assert f"spec.seed: {spec.seed} -> {spec.seed + 1}" in kept.error and "--overwrite" in kept.error
    assert (made.output.read_bytes(), made.sidecar.read_bytes()) == before  # untouched
    assert second.error is None and second.output.is_file()  # the rest of the batch runs
    report = json.loads((spec.output.dir / "job-report.json").read_text())
    assert [video["status"] for video in report["videos"]] == ["failed", "written"]

    replaced, again = run_job(reseeded, plan, context, progress=False, overwrite=True)
    assert replaced.error is None and made.output.read_bytes() != before[0]
    assert json.loads(made.sidecar.read_text())["seed"] == spec.seed + 1


def test_a_finished_output_with_an_unreadable_record_is_kept(seed_config, tmp_path, plugins, registry, context):
    clip = video_io.write_video(tmp_path / "clip.mp4", make_synthetic_clip(4, 32, 24), 8.0)
    spec, plan = idm_only(seed_config, tmp_path, plugins, registry, clip)
    [made] = run_job(spec, plan, context, progress=False)
    made.sidecar.write_text("{not json")
    [kept] = run_job(spec, plan, context, progress=False)
    assert "cannot be read" in kept.error and made.output.is_file()
