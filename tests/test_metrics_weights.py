"""The weights tier: transformers ports of VBench's network metrics, on tiny random-weight models saved in the real
transformers formats (values meaningless; loading and preprocessing real)."""

import json

import numpy as np
import pytest
import torch

from evs_framework.cli import main
from evs_framework.testing.zoo import save_tokenizer
from evs_plugins.metrics_weights import clip_pixels, middle_frames, normalise, shorter_side_to, to_tensor, IMAGENET


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("metric_weights")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(root / "dino-vitb16")
    for name in ("clip-vit-base-patch32", "clip-vit-large-patch14"):
        tokenizer = save_tokenizer(root / name)
        text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      image_size=224, patch_size=32)
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root / name)
    head = torch.nn.Linear(16, 1)
    torch.save(head.state_dict(), root / "sa_0_4_vit_l_14_linear.pth")
    file = root / "weights.yaml"
    file.write_text("dino_vitb16: dino-vitb16\nclip_vit_b32: clip-vit-base-patch32\nclip_vit_l14: clip-vit-large-patch14\n"
                    "laion_aesthetic_head: sa_0_4_vit_l_14_linear.pth\n")
    return file


def test_network_metrics_run_as_ports(weights, seed_config, tmp_path, zoo, capsys):
    assert main(["run", str(seed_config()), "--weights-dir", str(zoo), "--output-dir", str(tmp_path), "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ball.IDM_VDM_IDM.mp4"), "--weights", str(weights),
                 "--metrics", "subject_consistency,background_consistency,aesthetic_quality,clip_score", "-q"]) == 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert {spec["family"] for spec in data["metrics"].values()} == {"vbench_port"}
    assert not any(spec["comparable_to_vbench"] for spec in data["metrics"].values())
    [video] = data["videos"]
    for name in ("subject_consistency", "background_consistency"):
        assert 0.0 <= video["values"][name] <= 1.0 and 0.0 <= video["source_values"][name] <= 1.0
        assert data["metrics"][name]["aggregate"] == "frame_weighted"
    assert all(v is not None and np.isfinite(v) for v in video["values"].values())
    assert -1.0 <= video["values"]["clip_score"] <= 1.0  # the prompt came from the output's sidecar


def test_missing_weight_files_are_named_with_what_they_are(tmp_path, capsys):
    (tmp_path / "weights.yaml").write_text("dino_vitb16: nowhere/dino\nclip_vit_l14: nowhere/clip\nclip_vitb32: x\n")
    assert main(["eval", str(tmp_path / "any.mp4"), "--weights", str(tmp_path / "weights.yaml")]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "clip_vitb32: unknown weight" in err
    assert str(tmp_path / "nowhere/dino") + " does not exist; it should be DINO ViT-B/16" in err
    assert str(tmp_path / "nowhere/clip") + " does not exist; it should be CLIP ViT-L/14" in err


def test_preprocessing_follows_vbench():
    frames = np.random.default_rng(0).integers(0, 256, (2, 320, 512, 3), dtype=np.uint8)
    assert shorter_side_to(to_tensor(frames), 224, "bilinear").shape[-2:] == (224, 358)  # DINO: no crop
    assert clip_pixels(frames).shape[-2:] == (224, 224)  # CLIP: centre crop
    grey = normalise(torch.full((1, 3, 2, 2), 0.485), IMAGENET)
    assert torch.allclose(grey[0, 0], torch.zeros(2, 2), atol=1e-6)


def test_middle_frames_are_vbench_s():
    assert middle_frames(16) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert middle_frames(20) == [0, 3, 5, 8, 10, 13, 15, 18]
    assert middle_frames(4) == [0, 1, 2, 3]
