"""The optimised path: torch.compile of the loaded models, VAE precision and chunking, per-op memory records."""

import os

import pytest
import torch

from evs_framework.acceleration import (CACHE_ENV, DEFAULT_CACHE, compile_backends, compiled_modules, parse_compile_parts,
                                        use_persistent_cache)
from evs_framework.errors import EVSError
from evs_framework.io.vae import CHUNK_PIXEL_BYTES, decode_latents, finite_or_float32, frames_per_call
from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.planner import make_plan
from evs_framework.runner import VideoRun, decode, encode, load_backends, make_denoisers, run_plan
from evs_framework.testing.zoo import make_synthetic_clip
from tests.planning import native


@pytest.fixture
def fresh(zoo, plugins, registry, tmp_path, monkeypatch):
    """Backends of their own (compiling changes modules in place): (spec, plan, backends, context); the compile cache
    in the test's folder, not the user's."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "compile-cache"))
    torch._dynamo.reset()
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32)
    spec = native("clip.mp4", idm={"upscale": 2.0})
    plan = make_plan(spec, registry, plugins)
    yield spec, plan, load_backends(plan, context), context
    torch._dynamo.reset()


def run_clip(spec, plan, backends, plugins, clip):
    """encode, the plan's ops, decode, as the runner does: (latents, frames, op records)."""
    codec = backends["idm"].codec
    source = encode(codec, clip, None)
    denoisers = make_denoisers(plan, backends, "a red ball", spec.negative_prompt, plugins.catalogue)
    run = VideoRun(spec, plan, backends, denoisers, source, torch.Generator().manual_seed(5), plugins.catalogue,
                   torch.device("cpu"))
    latents, records, _ = run_plan(run, plugins.hook)
    return latents, decode(codec, latents, None), records


def test_compiled_models_give_the_eager_output(fresh, plugins):
    """The correctness guard on CPU: inductor-compiled UNets and VAE, same seed, same latents and frames within
    float32 rounding (fused kernels sum in another order)."""
    spec, plan, backends, _ = fresh
    clip = make_synthetic_clip(4, 32, 24, seed=3)
    eager_latents, eager_frames, _ = run_clip(spec, plan, backends, plugins, clip)
    compiled = compile_backends(backends, ("idm", "vdm", "vae"))
    assert compiled == ["idm network", "vdm network", "idm VAE encoder", "idm VAE decoder"]  # the shared VAE once
    latents, frames, _ = run_clip(spec, plan, backends, plugins, clip)
    assert ((latents - eager_latents).norm() / eager_latents.norm()) < 1e-4
    assert (frames - eager_frames).abs().max() < 1e-3
    assert compile_backends(backends, ("idm", "vdm", "vae")) == []  # compiled modules are left alone


def test_a_run_compiles_each_shape_once_not_each_step(fresh, plugins):
    """Graphs are made at the first calls of each shape; a second run, and every step after the first, reuses them
    (a timestep that torch.compile treated as a constant would compile anew at every step)."""
    spec, plan, backends, _ = fresh
    graphs = []

    def counting(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compile_backends(backends, ("idm", "vdm"), backend=counting)
    clip = make_synthetic_clip(4, 32, 24, seed=3)
    *_, records = run_clip(spec, plan, backends, plugins, clip)
    first_run = len(graphs)
    calls = sum(r.unet_calls for r in records)
    assert 0 < first_run < calls / 4
    run_clip(spec, plan, backends, plugins, clip)
    assert len(graphs) == first_run


def test_op_records_carry_the_latent_shape_and_no_memory_off_cuda(fresh, plugins):
    spec, plan, backends, _ = fresh
    *_, records = run_clip(spec, plan, backends, plugins, make_synthetic_clip(4, 32, 24))
    assert [r.shape for r in records if r.op == "DenoiseOp"] == [(4, 4, 6, 8)] * 3  # 32x24 / 8, upscaled x2
    assert all(r.peak_memory_bytes is None for r in records)


def test_compile_parts_are_roles_or_vae_and_an_unknown_role_is_refused(tiny_backends):
    assert parse_compile_parts(None) == () and parse_compile_parts("none") == ()
    assert parse_compile_parts("all") == ("all",) and parse_compile_parts("idm, vae") == ("idm", "vae")
    with pytest.raises(EVSError, match="'u-net' is not a part"):
        parse_compile_parts("idm,u-net")
    backends = tiny_backends[1]
    assert [name for name, _ in compiled_modules(backends, ("vdm",))] == ["vdm network"]
    assert {name for name, _ in compiled_modules(backends, ("all",))} >= {"idm network", "vdm network"}
    with pytest.raises(EVSError, match="'style' is no role of this run's composition; give all, vae or some of idm, vdm"):
        compiled_modules(backends, ("style",))


def test_the_cli_compiles_what_it_is_asked_and_keeps_cpu_vaes_in_float32(plugins, registry):
    from evs_framework.cli import _context, build_parser

    def context(*flags):
        return _context(build_parser().parse_args(["run", "spec.yaml", "--device", "cpu", *flags]), plugins, registry)

    assert context().vae_dtype == torch.float32 and context().compile == ()
    assert context("--compile", "idm,vae").compile == ("idm", "vae")
    assert context("--vae-dtype", "float16").vae_dtype == torch.float16
    with pytest.raises(EVSError, match="--compile vdm,bo-gus"):
        context("--compile", "vdm,bo-gus")


def test_the_compile_cache_persists_unless_the_user_chose_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    for unchosen in (None, default_cache_dir()):  # torch writes its temporary default into the environment itself
        if unchosen is None:
            monkeypatch.delenv(CACHE_ENV, raising=False)
        else:
            monkeypatch.setenv(CACHE_ENV, unchosen)
        use_persistent_cache()
        assert os.environ[CACHE_ENV] == str(DEFAULT_CACHE.expanduser())
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    use_persistent_cache()
    assert os.environ[CACHE_ENV] == str(tmp_path)


@pytest.mark.parametrize("dtype, width, height, frames", [
    (torch.float16, 1024, 640, 4), (torch.float32, 1024, 640, 2), (torch.float16, 512, 320, 16),
    (torch.float32, 8192, 8192, 1),
])
def test_vae_chunks_are_sized_to_the_memory_budget(dtype, width, height, frames):
    module = torch.nn.Linear(1, 1).to(dtype)
    assert frames_per_call(None, module, height, width) == frames
    assert frames * width * height * module.weight.element_size() <= CHUNK_PIXEL_BYTES or frames == 1
    assert frames_per_call(3, module, height, width) == 3  # a chunk the spec sets wins


def test_float16_overflow_is_computed_again_in_float32():
    module = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.eye(2) * 1000.0)
    module.half()
    small, large = torch.tensor([[1.0, 2.0]]), torch.tensor([[100.0, 200.0]])  # 1e5 and 2e5 overflow float16
    kept = finite_or_float32(module, module, small)
    assert kept.dtype == torch.float16 and torch.equal(kept.float(), torch.tensor([[1000.0, 2000.0]]))
    redone = finite_or_float32(module, module, large)
    assert redone.dtype == torch.float32 and torch.equal(redone, torch.tensor([[1e5, 2e5]]))
    assert module.weight.dtype == torch.float16  # put back


def test_a_float16_vae_that_overflows_decodes_as_float32_would(zoo, plugins, registry):
    """Latents far outside the VAE's range overflow float16 on the way in; the decode is then the float32 one."""
    context = LoadContext(plugins, registry, WeightSettings([zoo]), torch.device("cpu"), torch.float32, torch.float16)
    vae = context.load(registry.get("SD")).vae
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 2e4
    frames = decode_latents(vae, latents, 2)
    assert torch.isfinite(frames).all() and vae.dtype == torch.float16
    expected = decode_latents(vae.float(), latents, 2)
    assert torch.equal(frames, expected)


def test_backends_hand_the_unet_its_exact_timestep_as_a_tensor_on_the_latents_device(fresh, monkeypatch):
    """A fractional timestep (another model's level) reaches the UNet unrounded, as a 0-d tensor already on the
    device, so that diffusers does not copy a number to the GPU at every call."""
    _, _, backends, _ = fresh
    for role, backend in backends.items():
        seen = []
        forward = backend.unet.forward
        monkeypatch.setattr(backend.unet, "forward", lambda sample, timestep, *a, **k: seen.append(timestep) or
                            forward(sample, timestep, *a, **k))
        conditioning = backend.encode_prompts(["", "a red ball"])
        backend.predict(torch.randn(2, 4, 4, 6, 8), 428.571428, conditioning)
        [timestep] = seen
        assert torch.is_tensor(timestep) and timestep.dim() == 0 and timestep.device.type == "cpu", role
        assert timestep.item() == pytest.approx(428.571428, abs=1e-4), role
