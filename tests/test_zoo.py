"""The tiny zoo must load through the real diffusers/transformers loading path, offline and deterministically."""

import json

import pytest
import torch
from safetensors import safe_open
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from evs_framework.testing import zoo
from evs_framework.loaders.lora import read_lora
from evs_framework.loaders.motion_adapter import load_motion_adapter
from evs_framework.loaders.single_file import load_sd15_single_file
from evs_framework.testing.zoo import (
    ANIMATELCM_FOLDER, ANIMATELCM_LORA, LIGHTNING_FILE, SD_FOLDER as SD, SINGLE_FILES, WATERCOLOR_LORA, ZOO_VERSION,
    build_tiny_zoo, make_synthetic_clip,
)

EP, RV = SINGLE_FILES
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory):
    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"))


def load_unet(zoo_root, model):
    if model == SD:
        return UNet2DConditionModel.from_pretrained(zoo_root / SD, subfolder="unet", local_files_only=True).eval()
    return load_sd15_single_file(zoo_root / model, zoo_root / SD, torch.float32)["unet"].eval()


def test_marker_lists_every_file(zoo_root):
    marker = json.loads((zoo_root / "zoo.json").read_text())
    assert marker["version"] == ZOO_VERSION
    assert marker["files"] == [SD, EP, RV, WATERCOLOR_LORA, LIGHTNING_FILE, f"{ANIMATELCM_FOLDER}/{ANIMATELCM_LORA}"]
    assert all((zoo_root / path).exists() for path in marker["files"])
    assert "random weights" in marker["note"]
    assert not [p for p in zoo_root.rglob(".*") if p.name != "zoo.json"]  # no staging leftovers


def test_second_build_is_cached(zoo_root, monkeypatch):
    monkeypatch.setattr(zoo, "_write_zoo", lambda folder: pytest.fail("rebuilt a finished zoo"))
    watched = [zoo_root / "zoo.json", zoo_root / SD / UNET_WEIGHTS]
    before = [p.stat().st_mtime_ns for p in watched]
    assert build_tiny_zoo(zoo_root) == zoo_root
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert not [p for p in zoo_root.parent.iterdir() if ".building-" in p.name]


def test_builds_are_identical(zoo_root, tmp_path):
    """Same tensors and metadata (safetensors writes its metadata map in no fixed order, so bytes may differ)."""
    other = build_tiny_zoo(tmp_path / "other")
    for path in [f"{SD}/{UNET_WEIGHTS}", EP, WATERCOLOR_LORA, LIGHTNING_FILE, f"{ANIMATELCM_FOLDER}/{ANIMATELCM_LORA}"]:
        with safe_open(other / path, "pt") as theirs, safe_open(zoo_root / path, "pt") as ours:
            assert theirs.metadata() == ours.metadata(), path
            assert sorted(theirs.keys()) == sorted(ours.keys()), path
            assert all(torch.equal(theirs.get_tensor(k), ours.get_tensor(k)) for k in ours.keys()), path


def test_stale_version_is_rebuilt(tmp_path):
    root = tmp_path / "zoo"
    (root / SD).mkdir(parents=True)
    (root / SD / "leftover.txt").write_text("from an old layout")
    (root / "zoo.json").write_text(json.dumps({"version": ZOO_VERSION - 1}))
    build_tiny_zoo(root)
    assert json.loads((root / "zoo.json").read_text())["version"] == ZOO_VERSION
    assert not (root / SD / "leftover.txt").exists()
    assert (root / SD / UNET_WEIGHTS).is_file()


def test_interrupted_build_leaves_no_marker(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    root = tmp_path / "zoo"
    root.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(zoo, "make_motion_adapter", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            build_tiny_zoo(root)
    assert not (root / "zoo.json").exists()
    assert list(tmp_path.iterdir()) == [root] and not any(root.iterdir())  # staging folder cleaned up
    build_tiny_zoo(root)
    assert json.loads((root / "zoo.json").read_text())["version"] == ZOO_VERSION
    assert (root / ANIMATELCM_FOLDER / "config.json").is_file()


def test_tokenizer_and_text_encoder_load(zoo_root):
    tokenizer = CLIPTokenizer.from_pretrained(zoo_root / SD, subfolder="tokenizer", local_files_only=True)
    ids = tokenizer("a red car", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert tokenizer.model_max_length == 77 and len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.pad_token_id
    assert len(set(ids[1:8])) > 3  # the words were tokenized, not mapped to unk
    encoder = CLIPTextModel.from_pretrained(zoo_root / SD, subfolder="text_encoder", local_files_only=True)
    with torch.no_grad():
        hidden = encoder(torch.tensor([ids])).last_hidden_state
    assert hidden.shape == (1, 77, 32) and torch.isfinite(hidden).all()


def test_scheduler_has_sd15_config(zoo_root):
    scheduler = DDIMScheduler.from_pretrained(zoo_root / SD, subfolder="scheduler", local_files_only=True)
    config = scheduler.config
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (config.steps_offset, config.clip_sample, config.set_alpha_to_one) == (1, False, False)
    assert config.num_train_timesteps == 1000


def test_vae_downsamples_by_8(zoo_root):
    vae = AutoencoderKL.from_pretrained(zoo_root / SD, subfolder="vae", local_files_only=True).eval()
    with torch.no_grad():
        latent = vae.encode(torch.rand(2, 3, 48, 64) * 2 - 1).latent_dist.sample()
        image = vae.decode(latent).sample
    assert latent.shape == (2, 4, 6, 8)
    assert image.shape == (2, 3, 48, 64)
    assert vae.config.scaling_factor == 0.18215


@pytest.mark.parametrize("model", [SD, EP, RV])
def test_unet_noise_prediction_is_order_one(zoo_root, model):
    unet = load_unet(zoo_root, model)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 12, 16, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        eps = unet(sample, 500, encoder_hidden_states=text).sample
    assert eps.shape == sample.shape
    assert torch.isfinite(eps).all() and 0.1 < eps.std().item() < 10


def test_models_differ_by_seed(zoo_root):
    sample, text = torch.randn(1, 4, 12, 16), torch.randn(1, 77, 32)
    with torch.no_grad():
        sd_eps = load_unet(zoo_root, SD)(sample, 500, encoder_hidden_states=text).sample
        ep_eps = load_unet(zoo_root, EP)(sample, 500, encoder_hidden_states=text).sample
    assert (sd_eps - ep_eps).abs().mean() > 1e-3


@pytest.mark.parametrize("path", [LIGHTNING_FILE, ANIMATELCM_FOLDER])
def test_motion_adapters_compose_with_unet(zoo_root, path):
    adapter = load_motion_adapter(zoo_root / path, torch.float32)  # a bare state dict needs no config override
    assert isinstance(adapter, MotionAdapter)
    motion_unet = UNetMotionModel.from_unet2d(load_unet(zoo_root, EP), adapter).eval()
    sample = torch.randn(1, 4, 8, 12, 16)
    text = torch.randn(8, 77, 32)  # diffusers 0.42 wants one text embedding per frame: (batch * frames, 77, dim)
    with torch.no_grad():
        eps = motion_unet(sample, 500, encoder_hidden_states=text).sample
    assert eps.shape == sample.shape and torch.isfinite(eps).all()


@pytest.mark.parametrize("path", [WATERCOLOR_LORA, f"{ANIMATELCM_FOLDER}/{ANIMATELCM_LORA}"])
def test_loras_fit_the_sd15_unet(zoo_root, path):
    lora = read_lora(zoo_root / path, load_unet(zoo_root, SD))
    assert lora.format.startswith("kohya") and len(lora.deltas) > 10


def test_pipeline_folder_loads_as_a_whole(zoo_root):
    pipeline = StableDiffusionPipeline.from_pretrained(zoo_root / SD, local_files_only=True)
    assert isinstance(pipeline.scheduler, DDIMScheduler) and pipeline.safety_checker is None
    assert pipeline.vae_scale_factor == 8


def test_synthetic_clip():
    clip = make_synthetic_clip()
    assert clip.shape == (8, 3, 48, 64) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    assert torch.equal(clip, make_synthetic_clip())
    assert not torch.equal(clip, make_synthetic_clip(seed=1))
    assert make_synthetic_clip(frames=3, width=40, height=24).shape == (3, 3, 24, 40)
    changes = (clip[1:] - clip[:-1]).abs().flatten(1)
    assert (changes.max(dim=1).values > 0.1).all()  # every frame moves
    assert (changes.mean(dim=1) < 0.2).all()  # only the object moves, not the whole scene
