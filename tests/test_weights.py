"""Finding weights: local folders, the Hugging Face cache (offline), and `evs fetch`."""

import time

import huggingface_hub.constants
import pytest

from evs_framework.cli import main
from evs_framework.errors import WeightsError
from evs_framework.loading import SHIPPED_WEIGHTS, LoadContext, WeightSettings, default_weight_folders
from evs_framework.registry import WeightLocation


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    # huggingface_hub reads its environment at import time, so its constants are patched instead
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def fake_cached_repo(cache, repo: str, files: dict[str, bytes]):
    """Lay out a repo in the Hugging Face cache format (refs/main -> snapshots/<commit>/...)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder / "snapshots" / commit


def test_order_is_command_line_then_pretrained_models_then_env_then_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVS_WEIGHTS_DIR", str(tmp_path / "env"))
    assert default_weight_folders([tmp_path / "cli"]) == [tmp_path / "cli", tmp_path / "pretrained_models", tmp_path / "env",
                                                          SHIPPED_WEIGHTS]
    assert SHIPPED_WEIGHTS.parts[-3:] == ("evs_framework", "data", "weights")


def test_hugging_face_cache_is_searched_after_local_folders(plugins, registry, tmp_path, hf_home):
    snapshot = fake_cached_repo(hf_home, "ByteDance/AnimateDiff-Lightning", {"lightning.safetensors": b"x"})
    settings = WeightSettings([tmp_path / "weights"])
    location = WeightLocation(local="lightning.safetensors", hub="ByteDance/AnimateDiff-Lightning", file="lightning.safetensors")
    found = plugins.hook.resolve_weights(location=location, settings=settings)
    assert found == snapshot / "lightning.safetensors"
    assert settings.searched == [str(tmp_path / "weights" / "lightning.safetensors"),
                                 "Hugging Face cache: ByteDance/AnimateDiff-Lightning / lightning.safetensors"]
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "lightning.safetensors").write_bytes(b"y")
    assert plugins.hook.resolve_weights(location=location, settings=WeightSettings([tmp_path / "weights"])) == \
        tmp_path / "weights" / "lightning.safetensors"


def test_a_miss_lists_every_place_and_the_fix(plugins, registry, tmp_path, hf_home):
    context = LoadContext(plugins, registry, WeightSettings([tmp_path / "a", tmp_path / "b"]))
    with pytest.raises(WeightsError) as caught:
        context.weights_path(registry.get("SD"))
    message = str(caught.value)
    assert str(tmp_path / "a" / "stable-diffusion-v1-5") in message and str(tmp_path / "b" / "stable-diffusion-v1-5") in message
    assert "Hugging Face cache: stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "evs fetch SD" in message


def test_fetch_without_network_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # nothing listens there: the connection is refused at once, as on a machine with no network
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    assert main(["fetch", "lightningSD", "EP", "SD"]) == 2
    assert time.perf_counter() - started < 10  # one connection attempt, not a retry loop per name
    err = capsys.readouterr().err
    assert "could not download 'lightningSD' from the Hugging Face Hub (ByteDance/AnimateDiff-Lightning)" in err
    assert "3 of 3 model(s) not fetched" in err and "'EP' is not on the Hugging Face Hub" in err
    assert "could not download 'SD'" in err and "check the network connection" in err


def test_fetch_of_a_model_not_on_the_hub_says_where_to_get_it(capsys):
    assert main(["fetch", "EP"]) == 2
    err = capsys.readouterr().err
    assert "not on the Hugging Face Hub" in err and "civitai.com" in err


def test_fetch_downloads_only_the_files_a_model_needs(monkeypatch, tmp_path, capsys):
    from evs_framework import fetch

    asked = {}

    def fake_snapshot(repo, **kwargs):
        asked[repo] = kwargs
        return str(tmp_path / repo)

    monkeypatch.setattr(fetch, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(fetch, "hub_unreachable", lambda: None)
    assert main(["fetch", "SD", "animatelcm"]) == 0
    sd, lcm = asked["stable-diffusion-v1-5/stable-diffusion-v1-5"], asked["wangfuyun/AnimateLCM"]
    assert "unet/diffusion_pytorch_model.safetensors" in sd["allow_patterns"]
    assert not [p for p in sd["allow_patterns"] if p.endswith((".ckpt", "*.safetensors"))]  # no whole-repo weights
    assert lcm["allow_patterns"] == ["config.json", "diffusion_pytorch_model.safetensors",
                                     "AnimateLCM_sd15_t2v_lora.safetensors"]
    assert str(tmp_path / "wangfuyun/AnimateLCM") in capsys.readouterr().out
