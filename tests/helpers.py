"""Helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


def configure(project: Path, settings) -> None:
    """Set section.key values in the project's training_config.yaml, comments kept."""
    from mlflow_core.workflow.scaffold import set_yaml_value

    config = project / "training_config.yaml"
    text = config.read_text()
    for key, value in settings:
        text = set_yaml_value(text, key, value)
    config.write_text(text)


class NpzData:
    """The config a data manifest reads (`data.source` and `data.path`): NPZ files under data/."""

    class data:
        source, path = "npz", "data"


def write_npz(path: Path, value: int) -> None:
    """A small 6-band NPZ sample whose content is `value` everywhere."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=np.full((6, 4, 4), value, dtype=np.uint16), label=np.int64(1))


def run_metrics(**given):
    """A run's metrics.json record (RunMetrics) of a short CPU run, with `given` over it: the data,
    best value and architecture merged into what the trainer records, and each epoch filled out."""
    from mlflow_core.workflow.records import RunMetrics

    base = {
        "run_id": "r1", "phase": "baseline", "status": "completed", "device": "cpu", "torch": "2", "model": "m",
        "parameters": 1000, "seed": 0, "seeded": [], "deterministic": True, "metric": "val_loss", "mode": "min",
        "target": None, "epochs_planned": 1, "batch_size": 32, "num_workers": 0, "best": None, "nonfinite": None,
        "checkpoints": {}, "steps": 10, "recipe": {}, "stages": [], "config": {},
        "data": {"source": "test", "train_size": 100, "val_size": 20, "num_classes": 10, "input_shape": [1, 8, 8]},
        "architecture": {"activations": {}, "normalization": {}, "weight_layers": 2},
        "layers": {"names": [], "numel": [], "records": []},
    }
    for key in ("data", "architecture"):
        given[key] = {**base[key], **given.get(key, {})}
    if given.get("best"):
        given["best"] = {"epoch": 1, **given["best"]}
    given["anomalies"] = [{"epoch": None, **a} for a in given.get("anomalies", [])]
    given["epochs"] = [{"epoch": i + 1, "train_loss": 1.0, "train_accuracy": 0.5, "lr": 1e-3, "duration_s": 1.0, **e}
                       for i, e in enumerate(given.get("epochs", []))]
    return RunMetrics.model_validate({**base, **given})


def write_crashing_model(project: Path) -> None:
    """`mymodel:Fragile`, a custom model (digits-sized) whose training crashes at its 21st forward
    pass: a crash mid-run, as a lost GPU gives it; training_config.yaml is pointed at it."""
    (project / "mymodel.py").write_text(
        "import torch\nclass Fragile(torch.nn.Module):\n"
        "    def __init__(self, num_classes, in_channels):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64 * in_channels, num_classes)\n        self.calls = 0\n"
        "    def forward(self, x):\n        self.calls += 1\n"
        "        if self.training and self.calls > 20:\n            raise RuntimeError('the GPU fell off the bus')\n"
        "        return self.fc(x.flatten(1))\n")
    configure(project, [("model.name", "custom"), ("model.target", "mymodel:Fragile")])



class FileEvents:
    """What this process does to the files under a folder while watched, from Python's audit events
    (sys.addaudithook: every open, link and rename, whoever makes it; nothing is replaced or mocked):
    `created` (a new file: O_CREAT, as mkstemp makes an atomic write's temp file), `read` (opened
    for reading), `linked` (a hard link's new name); paths relative to the folder.

        with FileEvents(run / "checkpoints") as events:
            ...
        events.created
    """

    _active: ClassVar[list[FileEvents]] = []
    _installed: ClassVar[bool] = False

    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.created: list[str] = []
        self.read: list[str] = []
        self.linked: list[str] = []

    def __enter__(self) -> FileEvents:
        import sys

        if not FileEvents._installed:  # an audit hook cannot be removed: one for the process, idle unless watched
            sys.addaudithook(FileEvents._audit)
            FileEvents._installed = True
        FileEvents._active.append(self)
        return self

    def __exit__(self, *_exc) -> None:
        FileEvents._active.remove(self)

    def _name(self, path) -> str | None:
        try:
            resolved = Path(path).resolve() if Path(path).is_absolute() else (Path.cwd() / path).resolve()
        except (OSError, TypeError, ValueError):
            return None
        return str(resolved.relative_to(self.folder)) if self.folder in resolved.parents else None

    @staticmethod
    def _audit(event: str, args: tuple) -> None:
        if not FileEvents._active or event not in ("open", "os.link"):
            return
        import os

        for watch in list(FileEvents._active):
            if event == "os.link":
                name = watch._name(args[1])
                if name is not None:
                    watch.linked.append(name)
                continue
            path, mode, flags = args
            if not isinstance(path, (str, os.PathLike)):
                continue  # a file descriptor
            name = watch._name(path)
            if name is None:
                continue
            if flags & os.O_CREAT:
                watch.created.append(name)
            elif not (flags & (os.O_WRONLY | os.O_RDWR)) and not (mode or "").startswith(("w", "a", "x")):
                watch.read.append(name)


def wandb_records(path: Path, wait_s: float = 60.0) -> list:
    """The records of a finished W&B run file (`run-<id>.wandb`), as W&B's protobuf Record messages.
    W&B's service process writes the file after `run.finish()` returns, sometimes seconds later:
    read again until it holds the run's exit record (at most `wait_s` seconds)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_file_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def wandb_file_bytes(path: Path, wait_s: float = 60.0) -> bytes:
    """The bytes of a finished W&B run file (see wandb_records)."""
    wandb_records(path, wait_s)
    return path.read_bytes()


def _wandb_file_records(path: Path) -> list:
    """The file is LevelDB's log format (32 KiB blocks of checksummed, possibly fragmented records)
    after a 7-byte W&B header; this wandb ships no Python reader for it."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, records, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    offset = 7
    while offset + 7 <= len(data):
        room = block - offset % block
        if room < 7:  # a block's tail too short for a header is padding
            offset += room
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if length == 0 and kind == 0:
            offset += room
            continue
        chunk, offset = data[offset + 7:offset + 7 + length], offset + 7 + length
        pending += chunk
        if kind in (1, 4):  # a whole record, or a fragmented one's last part
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(pending)
            except Exception:  # the tail of a file still being written
                break
            records.append(record)
            pending = b""
        elif kind == 2:  # a fragmented record's first part
            pending = chunk
    return records


def wandb_history_steps(path: Path) -> list[int]:
    """The step of every history row a W&B run file holds, in order."""
    return [r.history.step.num for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]


def forge_evidence(project, phase, edit=lambda facts: None, edit_record=lambda record: None):
    """What an author who can edit every committed file does: change the facts (or the record around
    them), then recompute the evidence's hash and the run record's copy of it."""
    import json

    from mlflow_core.workflow.evidence import canonical_sha256

    path = project / ".wf" / "evidence" / f"{phase}.json"
    record = json.loads(path.read_text())
    edit(record["facts"])
    edit_record(record)
    body = {k: record[k] for k in ("phase", "run_id", "facts", "project_id", "entered_from") if k in record}
    record["sha256"] = canonical_sha256(body)
    path.unlink()  # the current evidence is a hard link to the run's copy: write a file of its own
    path.write_text(json.dumps(record, indent=2))
    state_path = project / ".wf" / "state.json"
    state = json.loads(state_path.read_text())
    for run in state["runs"]:
        if run["run_id"] == record["run_id"]:
            run["summary"]["evidence_sha256"] = record["sha256"]
    state_path.write_text(json.dumps(state, indent=2))
    return record
