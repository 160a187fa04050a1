"""The last good state kept on the device while losses are read back once per window."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DeviceSnapshot:
    """A device-side copy of the model's and optimizer's state, refreshed without a host sync.

    Parameters, buffers and optimizer state are updated in place, so the tensors to copy are the
    same objects window after window: they are listed once (and again only when their identities
    change, e.g. when the optimizer creates its state on the first step), the destination buffers
    are allocated once, and a refresh is one multi-tensor copy per device. The state dicts are
    rebuilt only when a dump is written.
    """

    def __init__(self) -> None:
        self._ids: tuple[int, ...] = ()
        self._names: list[tuple[str, Any, Any]] = []  # ("model", name, None) or ("optim", param index, key)
        self._buffers: list[torch.Tensor] = []
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._param_groups: list[dict[str, Any]] = []

    @staticmethod
    def _sources(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list, list[torch.Tensor]]:
        names, tensors = [], []
        for name, tensor in model.state_dict(keep_vars=True).items():
            names.append(("model", name, None))
            tensors.append(tensor)
        index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
        for param, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    names.append(("optim", index[id(param)], key))
                    tensors.append(value)
        return names, tensors

    def refresh(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> DeviceSnapshot:
        names, tensors = self._sources(model, optimizer)
        ids = tuple(map(id, tensors))
        if ids != self._ids:  # first call, or the optimizer created its state: (re)allocate
            self._ids, self._names = ids, names
            self._buffers = [t.detach().clone() for t in tensors]
            groups: dict[torch.device, tuple[list, list]] = {}
            for buffer, tensor in zip(self._buffers, tensors):
                dst, src = groups.setdefault(tensor.device, ([], []))
                dst.append(buffer)
                src.append(tensor.detach())
            self._groups = list(groups.values())
        else:
            for dst, src in self._groups:
                torch._foreach_copy_(dst, src)
        self._param_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        return self

    def materialize(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The snapshot as `{"model": state_dict, "optimizer": state_dict}`, loadable as usual."""
        model_sd: dict[str, torch.Tensor] = {}
        optim_state: dict[int, dict[str, Any]] = {}
        for (kind, name, key), buffer in zip(self._names, self._buffers):
            if kind == "model":
                model_sd[name] = buffer.clone()
            else:
                optim_state.setdefault(name, {})[key] = buffer.clone()
        packed = optimizer.state_dict()  # for the param_groups' layout (param indices)
        groups = [{**g, **{k: v for k, v in saved.items()}} for g, saved in zip(packed["param_groups"],
                                                                                  self._param_groups)]
        return {"model": model_sd, "optimizer": {"state": optim_state, "param_groups": groups}}
