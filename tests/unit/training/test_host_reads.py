"""The trainer reads no device value back to the host between its monitoring windows: on a GPU each
read waits for every queued kernel, so one per step stalls every step. Counted on the CPU with a
dispatch-mode counter (training/host_reads.py), on the windowed path accelerators take."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.callbacks.monitor import Monitor  # noqa: E402
from mlflow_core.training.host_reads import HostReads  # noqa: E402
from mlflow_core.training.trainer import Trainer  # noqa: E402

PLAIN = ""
EVERYTHING = """
training: {grad_clip_norm: 1.0, accumulate_steps: 2, label_smoothing: 0.1, ema: {enabled: true},
           scheduler: {name: onecycle}}
augmentation: {mixup_alpha: 0.2, horizontal_flip: 0.5}
"""


def _counted_run(tmp_path, monkeypatch, extra: str) -> tuple[list[int], list[int], HostReads, int]:
    cfg = load_config_text("""
training: {epochs: 2, batch_size: 32, device: cpu}
model: {channels: [8, 16]}
monitoring: {check_every_n_steps: 10}
early_stopping: {enabled: false}
checkpointing: {save_best: false, save_last: false, checkpoint_every_n_epochs: 0}
""", "t")
    if extra:
        import yaml

        from mlflow_core.config.schema import with_changes
        from mlflow_core.workflow.fingerprints import flatten

        cfg = with_changes(cfg, flatten(yaml.safe_load(extra)))
    reads = HostReads()
    between, at_flush = [], []
    flush, epoch_start = Monitor._flush, Monitor.on_epoch_start

    def counted_flush(self, t, s, step_in_epoch):
        between.append(reads.device_reads(reads.since_mark))  # the window's steps
        reads.mark()
        out = flush(self, t, s, step_in_epoch)
        at_flush.append(reads.device_reads(reads.since_mark))  # the one read-back of the window
        reads.mark()
        return out

    def counted_epoch_start(self, t, s):
        epoch_start(self, t, s)
        reads.mark()  # the epoch's end (its figures, validation) lies outside every window

    monkeypatch.setattr(Monitor, "_flush", counted_flush)
    monkeypatch.setattr(Monitor, "on_epoch_start", counted_epoch_start)
    trainer = Trainer(cfg, tmp_path, None, windowed=True)
    with reads:
        result = trainer.fit()
    assert result.status == "completed"
    return between, at_flush, reads, trainer.state.global_step


@pytest.mark.parametrize("extra", [PLAIN, EVERYTHING], ids=["plain", "clip-accumulate-ema-mixup-onecycle"])
def test_no_host_read_between_monitoring_windows(tmp_path, monkeypatch, extra):
    between, at_flush, reads, steps = _counted_run(tmp_path, monkeypatch, extra)
    assert len(between) >= 4 and steps >= 20
    assert between == [0] * len(between), (between, reads.by_origin)
    # each window reads its losses and gradient norms back once, whatever its length
    assert at_flush == [1] * len(at_flush), (at_flush, reads.by_origin)


def test_the_counter_sees_a_read_it_is_meant_to_catch():
    """The counter is the test's instrument: it must count .item(), float(), bool() and .tolist()."""
    x = torch.ones(3)
    with HostReads() as reads:
        x.sum().item()
        float(x[0])
        bool(x[1] > 0)
        x.tolist()
    assert reads.total == 4 and reads.device_reads() == 4
