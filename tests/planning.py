"""Helpers for tests that plan and run compositions on the tiny models: a native spec, and a plan run through
the runner's hooks on random latents with every model call counted."""

import torch

from evs_framework.runner import VideoRun, make_denoisers, run_plan
from evs_framework.spec import spec_from_data


def native(clip, composition="IDM_VDM_IDM", idm=None, vdm=None, using_attn=False, **settings):
    """A native spec on EP and lightningEP for `clip`, with `settings` over stable_steps [5]."""
    return spec_from_data({
        "inputs": [{"video": str(clip), "prompt": "a red ball"}],
        "models": {"idm": {"name": "EP", **(idm or {})}, "vdm": {"name": "lightningEP", **(vdm or {})}},
        "composition": composition, "settings": {"stable_steps": [5], **settings}, "seed": 23,
        "using_attn": using_attn,
    })


def run_counted(spec, plan, backends, plugins):
    """The plan run on random latents through the runner's hooks: (op records, model calls made per role)."""
    denoisers = make_denoisers(plan, {role: backends[role] for role in plan.models}, "a red ball", "", plugins.catalogue)
    source = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    run = VideoRun(spec, plan, backends, denoisers, source, torch.Generator().manual_seed(1), plugins.catalogue,
                   torch.device("cpu"))
    _, records, _ = run_plan(run, plugins.hook)
    return records, {role: d.calls for role, d in denoisers.items()}
