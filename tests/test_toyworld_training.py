"""The toy world's training script: every stage runs (a few CPU steps), resumes from its checkpoint, and exports
files that load through the registry as the shipped toy models do."""

import json

import attrs
import pytest
import torch
from safetensors.torch import load_file

from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.toyworld import models
from evs_framework.toyworld.train import VIDEO_DATA, main
from evs_framework.toyworld.world import sample_spec

RED = "a red striped disc drifting slowly left over a gray gradient"
BLUE = "a blue checkered triangle drifting quickly up over a green gradient"


def test_every_prompt_word_is_one_token_and_other_words_still_tokenize(tmp_path):
    tokenizer = models.save_tokenizer(tmp_path / "tokenizer")
    for seed in range(20):
        prompt = sample_spec(seed).prompt
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
        assert tokens == ["<|startoftext|>", *(f"{w}</w>" for w in prompt.split()), "<|endoftext|>"]
    assert "".join(tokenizer.tokenize("a zebra")).replace("</w>", " ").split() == ["a", "zebra"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stages vae and t2i for 2 steps, then t2i resumed to 3, the two video models and the style LoRA for 3, eval and
    the export."""
    root = tmp_path_factory.mktemp("toy")
    work, weights = root / "work", root / "weights"
    common = ["--work", str(work), "--batch", "1", "--measure", "16", "--device", "cpu", "--log-every", "1"]
    main(["--stage", "vae", "t2i", "--steps", "2", *common])
    main(["--stage", "t2i", "t2v", "vc", "style", "eval", "export", "--steps", "3", "--eval-prompts", "1",
          "--export", str(weights / "toyworld"), *common])
    return work, weights


def test_stages_resume_and_the_record_says_what_was_done(trained):
    work, weights = trained
    record = json.loads((weights / "toyworld" / models.TRAINING_RECORD).read_text())
    stages = record["stages"]
    assert [stages[s]["steps"] for s in ("vae", "t2i", "t2v", "vc", "style")] == [2, 3, 3, 3, 3]
    assert stages["t2v"]["video"] == attrs.asdict(VIDEO_DATA["t2v"])  # what the T2V learnt from is on record
    evaluation = record["evaluation"]  # eval sampled from every stage's product
    assert evaluation["t2i_samples"] > 0 and 0 <= evaluation["t2v_colour_accuracy"] <= 1
    assert evaluation["t2v_frame_difference"] > 0 and evaluation["vc_frame_difference"] > 0
    assert [step for step, _ in stages["t2i"]["losses"]] == [1, 2, 3]  # steps 1-2 kept from the first run
    vae_config = json.loads((weights / "toyworld" / "toy-sd" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == pytest.approx(record["scaling_factor"]) == stages["vae"]["scaling_factor"]
    assert record["parameters"]["unet"] == stages["t2i"]["parameters"] < 7_000_000
    assert record["parameters"]["t2v_motion_adapter"] < 3_000_000 and record["parameters"]["vae"] < 2_000_000
    assert record["total_bytes"] < 40_000_000  # issue 22's budget
    for name in ("t2v", "vc"):
        saved = load_file(weights / "toyworld" / models.ADAPTER_FILES[name])
        assert all(t.dtype == torch.float16 for t in saved.values())
        assert any(".motion_modules.0.proj_in.weight" in k for k in saved)  # diffusers key layout
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (weights / "toyworld" / "toy-sd" / "tokenizer" / name).is_file()


def test_the_export_loads_through_the_registry_and_prompts_change_the_picture(trained, plugins, registry):
    _, weights = trained
    context = LoadContext(plugins, registry, WeightSettings([weights]), torch.device("cpu"), torch.float32)
    t2i = context.load(registry.get("toyI"))
    t2v, vc, watercolor = (context.load(registry.get(name)) for name in ("toyV", "toyVC", "toyWatercolor"))
    assert t2i.unet.config.sample_size * 8 == t2i.vae.config.sample_size == 128
    # each video model and the style run over their own spatial weights: toyI's with their LoRA fused
    for model in (t2v, vc, watercolor):
        assert model.parts.unet is not t2i.unet
        assert all(torch.equal(a, b) for a, b in zip(model.parts.vae.parameters(), t2i.vae.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(model.parts.unet.parameters(), t2i.unet.parameters()))

    text = t2i.encode_prompts([RED, BLUE])
    x = torch.randn(1, 2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    red, blue = (t2i.predict(x, 500, text[i:i + 1]) for i in (0, 1))
    assert (red - blue).abs().mean() > 1e-3 * red.abs().mean()

    clip = torch.randn(1, 16, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    for model in (t2v, vc):
        eps = model.predict(clip, 500, text[:1])
        assert eps.shape == clip.shape and torch.isfinite(eps).all()


def test_each_video_model_learns_from_its_own_kind_of_video():
    from evs_framework.toyworld.train import WorldData, video_clips
    from evs_framework.toyworld.world import render

    def clips(stage):
        data = WorldData(0, 9, torch.device("cpu"))
        return video_clips(data, VIDEO_DATA[stage], 2)

    (t2v, t2v_prompts), (vc, vc_prompts) = clips("t2v"), clips("vc")
    data = WorldData(0, 9, torch.device("cpu"))
    specs = data.specs(2)
    truth = render(specs)
    assert t2v_prompts == vc_prompts == [s.prompt for s in specs]  # the prompts say the speed drawn

    def travel(clip):  # how far the shape's centre of change moves: frame 0 against frame 15 differs more
        return (clip[:, -1] - clip[:, 0]).abs().mean()

    def detail(clip):
        return (clip[..., 1:, :] - clip[..., :-1, :]).abs().mean()

    def flicker(clip):
        return clip.mean(dim=(2, 3, 4)).diff(dim=1).abs().mean()

    assert travel(t2v) < 0.8 * travel(truth)  # damped motion
    assert detail(t2v) < 0.8 * detail(truth) and detail(t2v) < detail(vc)  # softer than the truth and the VC analogue
    assert flicker(vc) > 3 * flicker(truth) and flicker(t2v) < 1.5 * flicker(truth)


def test_video_flags_change_what_a_video_model_learns_from(trained, tmp_path, monkeypatch):
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
    main(["--stage", "t2v", "--steps", "4", "--soften", "3", "--work", str(work), "--batch", "1", "--measure", "16",
          "--device", "cpu", "--log-every", "1"])  # resumes at step 3, draws new clips for step 4
    assert seen and set(seen) == {3}
    assert json.loads((work / "t2v.json").read_text())["video"]["soften"] == 3


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
