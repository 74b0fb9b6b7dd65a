"""The toy world's training script: every stage runs (a few CPU steps), resumes from its checkpoint, and exports
files that load through the registry as the shipped toyI / toyV do."""

import json

import pytest
import torch
from safetensors.torch import load_file

from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.toyworld import models
from evs_framework.toyworld.train import main
from evs_framework.toyworld.world import sample_spec

RED = "a red striped disc drifting left over a gray gradient"
BLUE = "a blue checkered triangle drifting up over a green gradient"


def test_every_prompt_word_is_one_token_and_other_words_still_tokenize(tmp_path):
    tokenizer = models.save_tokenizer(tmp_path / "tokenizer")
    for seed in range(20):
        prompt = sample_spec(seed).prompt
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
        assert tokens == ["<|startoftext|>", *(f"{w}</w>" for w in prompt.split()), "<|endoftext|>"]
    assert "".join(tokenizer.tokenize("a zebra")).replace("</w>", " ").split() == ["a", "zebra"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stages vae and t2i for 2 steps, then t2i resumed to 3, t2v for 3 (on softened clips), the T2I fine-tuned for 3
    more, eval and the export."""
    root = tmp_path_factory.mktemp("toy")
    work, weights = root / "work", root / "weights"
    common = ["--work", str(work), "--batch", "1", "--measure", "16", "--device", "cpu", "--log-every", "1"]
    main(["--stage", "vae", "t2i", "--steps", "2", *common])
    main(["--stage", "t2i", "t2v", "finetune", "eval", "export", "--steps", "3", "--t2v-soften", "2", "--eval-prompts", "1",
          "--export", str(weights / "toyworld"), *common])
    return work, weights


def test_stages_resume_and_the_record_says_what_was_done(trained):
    work, weights = trained
    record = json.loads((weights / "toyworld" / models.TRAINING_RECORD).read_text())
    stages = record["stages"]
    assert [stages[s]["steps"] for s in ("vae", "t2i", "t2v", "finetune")] == [2, 3, 3, 3]
    assert stages["t2v"]["soften"] == 2  # the T2V learnt from softened clips
    evaluation = record["evaluation"]  # eval sampled from every stage's product
    assert evaluation["t2i_samples"] > 0 and 0 <= evaluation["t2v_colour_accuracy"] <= 1
    assert evaluation["t2v_frame_difference"] > 0
    assert [step for step, _ in stages["t2i"]["losses"]] == [1, 2, 3]  # steps 1-2 kept from the first run
    vae_config = json.loads((weights / "toyworld" / "toy-sd" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == pytest.approx(record["scaling_factor"]) == stages["vae"]["scaling_factor"]
    assert record["parameters"]["unet"] == stages["t2i"]["parameters"] < 7_000_000
    assert record["parameters"]["motion_adapter"] < 3_000_000 and record["parameters"]["vae"] < 2_000_000
    assert record["total_bytes"] < 25_000_000
    saved = load_file(weights / "toyworld" / models.ADAPTER_FILE)
    assert all(t.dtype == torch.float16 for t in saved.values())
    assert any(".motion_modules.0.proj_in.weight" in k for k in saved)  # diffusers key layout
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (weights / "toyworld" / "toy-sd" / "tokenizer" / name).is_file()


def test_the_export_loads_through_the_registry_and_prompts_change_the_picture(trained, plugins, registry):
    _, weights = trained
    context = LoadContext(plugins, registry, WeightSettings([weights]), torch.device("cpu"), torch.float32)
    t2i = context.load(registry.get("toyI"))
    t2v = context.load(registry.get("toyV"))
    assert t2v.parts is t2i.parts  # the motion model runs over the text-to-image model's own modules
    assert t2i.unet.config.sample_size * 8 == t2i.vae.config.sample_size == 128

    text = t2i.encode_prompts([RED, BLUE])
    x = torch.randn(1, 2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    red, blue = (t2i.predict(x, 500, text[i:i + 1]) for i in (0, 1))
    assert (red - blue).abs().mean() > 1e-3 * red.abs().mean()

    clip = torch.randn(1, 16, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    eps = t2v.predict(clip, 500, text[:1])
    assert eps.shape == clip.shape and torch.isfinite(eps).all()


def test_t2v_soften_softens_the_clips_the_t2v_learns_from(trained, tmp_path, monkeypatch):
    import shutil

    from evs_framework.toyworld import train

    work = tmp_path / "work"
    shutil.copytree(trained[0], work)
    seen = []

    def spy(clips, scale):
        seen.append(scale)
        return train_soften(clips, scale)

    train_soften = train.soften
    monkeypatch.setattr(train, "soften", spy)
    main(["--stage", "t2v", "--steps", "4", "--t2v-soften", "3", "--work", str(work), "--batch", "1", "--measure", "16",
          "--device", "cpu", "--log-every", "1"])  # resumes at step 3, draws new clips for step 4
    assert seen and set(seen) == {3}
    assert json.loads((work / "t2v.json").read_text())["soften"] == 3


def test_the_decoder_stage_trains_the_decoder_alone_and_the_record_keeps_it(trained, tmp_path):
    import shutil

    from diffusers import AutoencoderKL

    work, weights = tmp_path / "work", tmp_path / "weights"
    shutil.copytree(trained[0], work)
    before = AutoencoderKL.from_pretrained(work / "vae").state_dict()
    main(["--stage", "decoder", "export", "--steps", "2", "--work", str(work), "--batch", "1", "--measure", "16",
          "--device", "cpu", "--log-every", "1", "--export", str(weights)])
    after = AutoencoderKL.from_pretrained(work / "vae")
    changed = {name.split(".")[0] for name, value in after.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"decoder", "post_quant_conv"}  # the encoder's latents, which the UNets learnt on, stay
    stages = json.loads((weights / models.TRAINING_RECORD).read_text())["stages"]
    assert stages["decoder"]["steps"] == 2 and "held_out_brightest_corner_error_ratio" in stages["decoder"]
    assert after.config.scaling_factor == stages["vae"]["scaling_factor"]
