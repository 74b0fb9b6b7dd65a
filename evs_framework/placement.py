"""Where model weights wait between uses: on the compute device, or in CPU memory for small GPUs (--offload).

With offloading, every model loads into CPU memory and only the modules at work (a text encoder, the VAE, one
UNet) sit on the compute device; asking for others moves the idle ones back first. Modules shared between models
(a motion UNet's spatial layers are the T2I UNet's) end up on the device whenever either model asks for them,
because idle modules leave before the asked-for ones arrive. Not accelerate's `cpu_offload_with_hook` (under diffusers'
`enable_model_cpu_offload`): each hook offloads one fixed predecessor, and skips the move when the model's first
parameter is already on the device; with the shared conv_in, the T2I UNet run after the motion UNet then found its own
layers on the CPU ("Expected all tensors to be on the same device").
"""

from __future__ import annotations

import attrs
import torch

CPU = torch.device("cpu")


@attrs.define
class Placement:
    device: torch.device
    offload: bool = False
    _resident: tuple = ()

    @property
    def load_device(self) -> torch.device:
        """Where loaders put weights."""
        return CPU if self.offload else self.device

    def use(self, *modules: torch.nn.Module) -> None:
        """Make `modules` ready to run on the compute device (a no-op without offloading); None entries are skipped."""
        modules = tuple(m for m in modules if m is not None)
        if not self.offload or [id(m) for m in modules] == [id(m) for m in self._resident]:
            return
        wanted = {id(m) for m in modules}
        for module in self._resident:
            if id(module) not in wanted:
                module.to(CPU)
        for module in modules:
            module.to(self.device)
        self._resident = modules
