"""training/callbacks/checkpoints.py: an epoch's checkpoints (best, top, periodic, last) are one
payload, serialised once and linked under the other names; counted through Python's audit events
(every file the process creates, every hard link it makes)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.checkpoint import load_checkpoint  # noqa: E402
from mlflow_core.training.trainer import Trainer  # noqa: E402
from tests.helpers import FileEvents  # noqa: E402


def test_each_epoch_serialises_its_checkpoint_once_and_links_the_other_names(tmp_path):
    cfg = load_config_text("training: {device: cpu, epochs: 3, learning_rate: 0.01}\nmodel: {channels: [8]}\n"
                           "early_stopping: {enabled: false}\n"
                           "checkpointing: {keep_best: 3, checkpoint_every_n_epochs: 1, save_best: true, "
                           "save_last: true, resume_every_n_steps: 0}\n", "t")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with FileEvents(run / "checkpoints") as events:
        result = Trainer(cfg, tmp_path, run).fit()
    created = [name for name in events.created if not name.startswith((".resume.pt.", ".resume.json."))]  # the resume point's own
    epochs = len(result.metrics["epochs"])
    assert epochs == 3 and len(created) == epochs  # one serialisation per epoch, whatever it is saved as
    saved = result.metrics["checkpoints"]
    improved = sum(1 for e in result.metrics["epochs"] if e.get("improved"))
    # each epoch: top, periodic and last, and best when it improved; all but the first are links. The
    # replay states (the resume point at each epoch's start) are links to resume.pt, never a second write
    replay = [name for name in events.linked if name.startswith("replay/")]
    assert len(replay) == epochs and len(events.linked) - len(replay) == 2 * epochs + improved
    for ref in [saved["best"], saved["last"], *saved["periodic"], *saved["top"]]:
        path = run / ref["path"]
        assert path.stat().st_size == ref["bytes"]
        assert load_checkpoint(path)["epoch"] == ref["epoch"]
    assert saved["last"]["sha256"] == saved["periodic"][-1]["sha256"]
    assert (run / saved["last"]["path"]).stat().st_ino == (run / saved["periodic"][-1]["path"]).stat().st_ino
    # a later epoch replaced last_model.pt with its own file: the earlier periodic checkpoint kept its bytes
    assert saved["periodic"][0]["sha256"] != saved["last"]["sha256"]
    assert load_checkpoint(run / saved["periodic"][0]["path"])["epoch"] == 1
