"""Active probes for non-finite training: short experiments on the saved last good state.

- `replay_nonfinite`: restore the last good state, replay the saved batches up to the offending one,
  and run the offending step watching every aten op (TorchDispatchMode) for the first one that turns
  finite inputs into a non-finite output; the backward pass runs under autograd anomaly detection,
  which names the backward function that produced a NaN. A mixed-precision run is replayed under
  the same autocast, and its offending step once more in fp32. (Windowed dumps replay the steps
  before the offending one without the GradScaler, whose state is not in the dump.)
- `update_scale`: per-layer gradient norms at initialisation on the offending batch, and the
  update/weight ratio the configured learning rate implies for each layer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.training.models import build_model
from mlflow_core.training.optim import build_optimizer
from mlflow_core.training.seeding import seed_everything


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class _FirstNonFiniteOp(TorchDispatchMode):
    """Records the first aten op whose inputs are finite and whose output is not."""

    def __init__(self) -> None:
        super().__init__()
        self.op: str | None = None
        self.detail: dict[str, Any] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.op is None:
            outs = _tensors(out)
            if outs and not _all_finite(outs) and _all_finite(_tensors((args, kwargs))):
                ins = _tensors((args, kwargs))
                self.op = str(func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else func)
                self.detail = {"input_abs_max": max((float(t.abs().max()) for t in ins if t.numel()), default=0.0),
                               "input_min": min((float(t.min()) for t in ins if t.numel()), default=0.0)}
        return out


def _first_module(model: nn.Module, inputs: torch.Tensor) -> tuple[str | None, dict[str, Any]]:
    """The first leaf module (in execution order) whose output is non-finite while its input is finite."""
    found: list[tuple[str, dict[str, Any]]] = []
    hooks = []

    def hook(name: str):
        def fn(module, args, output):
            if found:
                return
            outs, ins = _tensors(output), _tensors(args)
            if outs and not _all_finite(outs) and _all_finite(ins):
                found.append((name, {"type": type(module).__name__,
                                     "input_abs_max": max((float(t.abs().max()) for t in ins if t.numel()), default=0.0)}))
        return fn

    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(hook(name)))
    # registered last, so it runs last: catches an op in the model's own forward, outside any submodule
    hooks.append(model.register_forward_hook(hook(f"{type(model).__name__}.forward")))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else (None, {})


def _weight_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))


def replay_nonfinite(dump: dict[str, Any], cfg: WorkflowConfig, project_root: Path, num_classes: int,
                     input_shape: tuple[int, ...]) -> dict[str, Any]:
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    model = build_model(cfg.model, num_classes, input_shape, project_root)
    model.load_state_dict(dump["model"])
    optimizer = build_optimizer(cfg.training, [p for p in model.parameters() if p.requires_grad])
    optimizer.load_state_dict(dump["optimizer"])
    criterion = nn.CrossEntropyLoss()
    batches = dump["batches"]
    model.train()
    for batch in batches[:-1]:  # windowed (GPU) dumps: replay up to the offending step
        loss = criterion(model(batch["inputs"]), batch["targets"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    inputs, targets = batches[-1]["inputs"], batches[-1]["targets"]
    out: dict[str, Any] = {
        "replayed_steps": len(batches) - 1,
        "inputs_nonfinite": int((~torch.isfinite(inputs)).sum()),
        "inputs_abs_max": float(inputs[torch.isfinite(inputs)].abs().max()) if torch.isfinite(inputs).any() else None,
        "weights_finite": _all_finite(list(model.state_dict().values())),
        "weight_norm_last_good": _weight_norm(model),
    }
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.training.precision)
    autocast = torch.autocast(inputs.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    with autocast:  # the offending step as it ran: under mixed precision when the run used it
        module, module_detail = _first_module(model, inputs)
    out["first_module"], out["first_module_detail"] = module, module_detail
    mode = _FirstNonFiniteOp()
    with mode, autocast:
        logits = model(inputs)
        loss = criterion(logits, targets)
    out["precision"] = cfg.training.precision
    if amp_dtype is not None:  # the same step in fp32: finite there means the reduced precision overflowed
        with torch.no_grad():
            out["fp32_loss"] = float(criterion(model(inputs), targets))
    out["forward_op"], out["forward_op_detail"] = mode.op, mode.detail
    out["replayed_loss"] = float(loss.detach())
    out["logits_finite"] = bool(torch.isfinite(logits).all())
    out["backward_op"] = None
    if math.isfinite(out["replayed_loss"]):
        optimizer.zero_grad(set_to_none=True)
        try:
            with torch.autograd.detect_anomaly(check_nan=True), autocast:
                criterion(model(inputs), targets).backward()
        except RuntimeError as exc:
            match = re.search(r"Function '(\w+)' returned nan", str(exc))
            out["backward_op"] = match.group(1) if match else str(exc).splitlines()[0][:200]
        else:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            out["grads_finite_on_replay"] = _all_finite(grads)
    return out


def update_scale(dump: dict[str, Any], cfg: WorkflowConfig, project_root: Path, num_classes: int,
                 input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Per-layer gradient norms at initialisation on the offending batch, and lr·‖g‖/‖w‖ per layer.

    For SGD the first update of a layer is lr·g, so lr·‖g‖/‖w‖ is its relative size; Adam's first
    update is about lr per element, so its relative size is lr·sqrt(n)/‖w‖."""
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    model = build_model(cfg.model, num_classes, input_shape, project_root)
    batch = dump["batches"][-1]
    loss = nn.CrossEntropyLoss()(model(batch["inputs"]), batch["targets"])
    loss.backward()
    lr, sgd = cfg.training.learning_rate, cfg.training.optimizer == "sgd"
    layers = []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g, w = float(p.grad.norm()), float(p.detach().norm())
        step = lr * g if sgd else lr * math.sqrt(p.numel())
        layers.append({"name": name, "grad_norm": g, "weight_norm": w,
                       "update_ratio": step / w if w > 0 else float("inf")})
    ratios = [layer["update_ratio"] for layer in layers if math.isfinite(layer["update_ratio"])]
    return {"loss_at_init": float(loss.detach()), "ln_num_classes": math.log(num_classes),
            "weight_norm_init": _weight_norm(model), "layers": layers,
            "max_update_ratio": max(ratios) if ratios else None,
            "median_update_ratio": sorted(ratios)[len(ratios) // 2] if ratios else None}
