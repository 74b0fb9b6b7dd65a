"""LoRAs trained in place (evs_framework/toyworld/lora_training.py) are written in a format the runtime's own LoRA
loader reads back, and fusing the file gives the UNet the trained adapter's outputs."""

import copy

import torch

from evs_framework.loaders.lora import fuse_lora, read_lora
from evs_framework.toyworld import models
from evs_framework.toyworld.lora_training import SPATIAL_TARGETS, add_lora, save_lora


def test_a_saved_lora_fused_by_the_runtime_gives_the_trained_outputs(tmp_path):
    torch.manual_seed(0)
    unet = models.make_unet().eval()
    base = copy.deepcopy(unet)
    deltas = add_lora(unet, rank=4)
    assert not any(p.requires_grad for name, p in unet.named_parameters() if "parametrizations" not in name
                   or name.endswith("original"))  # the UNet's own weights stay frozen
    x, t, text = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, models.TEXT_DIM)
    with torch.no_grad():
        untrained = unet(x, t, encoder_hidden_states=text).sample
        assert torch.equal(untrained, base(x, t, encoder_hidden_states=text).sample)  # up starts at zero
        for delta in deltas.values():
            delta.up.normal_(std=0.05)
        trained = unet(x, t, encoder_hidden_states=text).sample
    file = save_lora(deltas, tmp_path / "lora.safetensors")
    lora = read_lora(file, base)
    layers = {name for name, m in base.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
              and name.endswith(SPATIAL_TARGETS)}
    assert fuse_lora(lora, base) == len(layers) == len(deltas)  # convolutions as well as projections
    with torch.no_grad():
        fused = base(x, t, encoder_hidden_states=text).sample
    assert (trained - untrained).abs().mean() > 0.01
    assert torch.allclose(fused, trained, atol=2e-3)  # float16 file
