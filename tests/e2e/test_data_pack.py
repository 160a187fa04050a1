"""The packed data path end to end: `wf data pack` and setup build it, training reads it, and the
weights are the very weights of the per-file path, resumed mid-epoch or not."""

import json
import os
import signal

import pytest

from tests.helpers import configure

torch = pytest.importorskip("torch")


def _config(pack):
    from mlflow_core.config import load_config_text

    return load_config_text(f"data: {{source: npz, path: data/patches, pack: {pack}}}\n"
                            "training: {device: cpu, epochs: 2, batch_size: 16}\nmodel: {channels: [8, 16]}\n"
                            "early_stopping: {enabled: false}\nmonitoring: {check_every_n_steps: 1}\n", "t")


def test_packed_and_per_file_training_reach_the_same_weights_and_a_packed_resume_too(tmp_path):
    from mlflow_core.training.trainer import Trainer
    from mlflow_core.workflow.scaffold import write_patches

    write_patches(tmp_path / "data" / "patches", size=16, train=64, val=16, test=0)
    files = Trainer(_config("off"), tmp_path, tmp_path / "files").fit()
    packed = Trainer(_config("on"), tmp_path, tmp_path / "packed").fit()  # `on`: packs what is missing
    assert "packed (train, val)" in packed.metrics["data"]["source"]
    assert "packed" not in files.metrics["data"]["source"]

    def signal_at(p):
        if p.stage == "train" and p.global_step == 6:  # epoch 2, its second of 4 steps
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = _config("auto")  # the pack `on` built is current: used
    cut = Trainer(cfg, tmp_path, tmp_path / "cut", on_progress=signal_at, stop_on_signals=True).fit()
    assert cut.status == "interrupted"
    resumed = Trainer(cfg, tmp_path, tmp_path / "cut", stop_on_signals=True,
                      resume_from=tmp_path / "cut" / "checkpoints" / "resume.pt").fit()
    for other in (packed, resumed):
        a, b = files.model.state_dict(), other.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert [e["val_loss"] for e in other.metrics["epochs"]] == [e["val_loss"] for e in files.metrics["epochs"]]


def test_wf_data_pack_then_setup_records_the_packs_and_a_changed_file_is_read_from_the_files(wf, tmp_path):
    from mlflow_core.workflow.scaffold import init_project

    root = init_project(tmp_path / "p", example="patches").root
    configure(root, [("data.normalize", "none")])  # the samples as stored, to compare with the files below
    r = wf("data", "pack", cwd=root)
    assert r.code == 0, r.err
    assert "train: packed, 160 samples float32 6×32×32" in r.out and "val: packed, 48 samples" in r.out
    again = wf("data", "pack", cwd=root)
    assert "train: already packed" in again.out
    assert wf("phase", "setup", cwd=root).code == 0
    facts = json.loads((root / ".wf" / "evidence" / "setup.json").read_text())["facts"]
    assert set(facts["data_pack"]) == {"train", "val", "test"} and facts["data_pack"]["train"]["built"] is False
    # the loader alone, on the run's path and on the files, against the model alone
    throughput = facts["throughput"]
    assert throughput["path"] == "packed" and set(throughput["loader"]) == {"packed", "files"}
    assert throughput["loader"]["packed"] > throughput["loader"]["files"] > 0 and throughput["model"] > 0
    report = (root / "reports" / "setup_report.md").read_text()
    assert "| loader alone, packed arrays, read as stored and converted on the training device (the run's) |" in report and "| loader alone, one file per sample |" in report
    assert ("**Model-bound**" in report) == (throughput["bound"] == "model")

    import numpy as np

    from mlflow_core.config import load_config
    from mlflow_core.training.data.sources import build_data

    first = sorted((root / "data" / "patches" / "val").glob("*.npz"))[0]
    with np.load(first) as z:
        image, label = z["image"], z["label"]
    np.savez_compressed(first, image=image + 1, label=label)  # the files changed after packing
    bundle = build_data(load_config(root / "training_config.yaml"), root)
    assert bundle.source.endswith("packed (train, test)")  # val is read from its files, never the stale pack
    assert torch.equal(bundle.val[0][0], torch.from_numpy(image + 1))


def test_packing_data_that_is_not_npz_says_what_is_packed(wf, tmp_path):
    from mlflow_core.workflow.scaffold import init_project

    root = init_project(tmp_path / "p").root  # digits
    r = wf("data", "pack", cwd=root)
    assert r.code == 2 and "data.source 'digits': only NPZ folders, ImageFolder and CSV images are packed" in r.err
