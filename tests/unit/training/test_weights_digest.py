"""The weights digest every epoch records and `wf verify` compares re-trained weights with."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mlflow_core.training.checkpoint import weights_sha256  # noqa: E402


def test_the_digest_sees_a_change_of_one_weight_by_1e_6_and_not_the_memory_format():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    state = model.state_dict()
    digest = weights_sha256(state)
    as_channels_last = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                        for k, v in state.items()}
    assert weights_sha256(as_channels_last) == digest  # the same numbers, laid out otherwise
    nudged = {k: v.clone() for k, v in state.items()}
    nudged["0.weight"].view(-1)[0] += 1e-6
    assert weights_sha256(nudged) != digest
    assert weights_sha256({**state, "0.weight": state["0.weight"].double()}) != digest  # dtype is part of it
