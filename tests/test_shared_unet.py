"""The motion UNet reuses the base UNet's spatial weights instead of copying them."""

import torch
from diffusers import UNet2DConditionModel, UNetMotionModel

from evs_framework.loaders.motion_adapter import load_motion_adapter
from evs_framework.testing.zoo import LIGHTNING_FILE, SD_FOLDER
from evs_plugins.animatediff import motion_unet_over


def parameters_resident(*modules) -> int:
    return sum({p.data_ptr(): p.numel() for m in modules for p in m.parameters()}.values())


def test_shared_motion_unet_holds_no_copy_and_computes_the_same(zoo):
    unet = UNet2DConditionModel.from_pretrained(zoo / SD_FOLDER, subfolder="unet", local_files_only=True)
    adapter = load_motion_adapter(zoo / LIGHTNING_FILE, torch.float32)
    copied = UNetMotionModel.from_unet2d(unet, adapter)
    shared = motion_unet_over(unet, adapter)

    spatial = dict(unet.named_parameters())
    for name, parameter in shared.named_parameters():
        if "motion_modules" not in name:
            assert parameter.data_ptr() == spatial[name].data_ptr(), name  # same storage, not a copy
    assert parameters_resident(unet, shared) == parameters_resident(unet) + parameters_resident(adapter)
    assert parameters_resident(unet, copied) > parameters_resident(unet, shared)

    copied_state, shared_state = copied.state_dict(), shared.state_dict()
    assert copied_state.keys() == shared_state.keys()
    assert all(torch.equal(copied_state[k], shared_state[k]) for k in copied_state)

    sample = torch.randn(1, 4, 8, 12, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(8, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(shared(sample, 500, encoder_hidden_states=text).sample,
                                   copied(sample, 500, encoder_hidden_states=text).sample, rtol=0, atol=1e-5)


def test_lightning_over_ep_next_to_ep_loads_ep_once(context, registry):
    idm = context.load(registry.get("EP"))
    vdm = context.load(registry.get("lightningEP"))
    assert vdm.unet.down_blocks[0].resnets is idm.parts.unet.down_blocks[0].resnets
    assert vdm.vae is idm.vae
