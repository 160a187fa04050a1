"""The shared trainer's parts on small real or generated data: sources, models, schedulers, and
both monitoring paths (per-step on the CPU, windowed as on GPUs — forced here on the CPU)."""

import itertools
import math

import numpy as np
import pytest
import torch

from mlflow_core.config import load_config_text
from mlflow_core.errors import DataError, UserInputError
from mlflow_core.training.checkpoint import load_checkpoint
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.models import build_model
from mlflow_core.training.trainer import Trainer
from mlflow_core.workflow.scaffold import write_patches


def cfg(text: str = ""):
    return load_config_text(text, "test.yaml")


def test_digits_split_is_stratified_and_disjoint(tmp_path):
    data = build_data(cfg("data: {test_fraction: 0.1}"), tmp_path)
    sizes = (len(data.train), len(data.val), len(data.test))
    assert sum(sizes) == 1797 and data.num_classes == 10 and data.input_shape == (1, 8, 8)
    val_labels = torch.tensor([data.val[i][1] for i in range(len(data.val))])
    assert torch.bincount(val_labels).min() >= 30  # every digit is in val


def test_npz_patches_any_band_count(tmp_path):
    write_patches(tmp_path / "p", bands=4, size=16, classes=3, train=12, val=6)
    data = build_data(cfg("data: {source: npz, path: p}"), tmp_path)
    assert data.input_shape == (4, 16, 16) and data.num_classes == 3 and len(data.train) == 12


def test_npz_channels_last_and_bad_files(tmp_path):
    (tmp_path / "p" / "train").mkdir(parents=True)
    (tmp_path / "p" / "val").mkdir()
    for split in ("train", "val"):
        np.savez(tmp_path / "p" / split / "a.npz", image=np.zeros((16, 16, 6), np.float32), label=np.int64(1))
    data = build_data(cfg("data: {source: npz, path: p, num_classes: 2}"), tmp_path)
    assert data.input_shape == (6, 16, 16)
    (tmp_path / "p" / "train" / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"broken\.npz: cannot be read as \.npz"):
        build_data(cfg("data: {source: npz, path: p}"), tmp_path)


def test_empty_npz_split_is_named(tmp_path):
    (tmp_path / "p" / "train").mkdir(parents=True)
    (tmp_path / "p" / "val").mkdir()
    with pytest.raises(DataError, match=r"p/train: no \.npz files found"):
        build_data(cfg("data: {source: npz, path: p}"), tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = build_data(cfg("data: {source: imagefolder, path: imgs, image_size: 16}"), tmp_path)
    assert data.num_classes == 2 and data.input_shape == (3, 16, 16)
    x, _y = data.train[0]
    assert x.dtype == torch.float32 and x.min() >= 0.0 and x.max() <= 1.0


def test_imagefolder_of_several_sizes_names_image_size(tmp_path):
    from PIL import Image

    from mlflow_core.training.data_checks import check_data
    for split in ("train", "val"):
        for cls, size in (("cat", (20, 24)), ("dog", (30, 30))):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(folder / "0.png")
    data = build_data(cfg("data: {source: imagefolder, path: imgs}"), tmp_path)
    with pytest.raises(DataError, match=r"every sample must have the same shape; set data\.image_size"):
        check_data(data, batch_size=2)


USER_CODE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return {"train": TensorDataset(x, y), "val": TensorDataset(x[:10], y[:10])}

class Tiny(nn.Module):
    def __init__(self, num_classes, in_channels, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
    def forward(self, x):
        return self.net(x)
'''


def test_custom_data_and_model_by_import_path(tmp_path):
    (tmp_path / "my_code.py").write_text(USER_CODE)
    c = cfg("""
data: {source: custom, target: "my_code:build", kwargs: {n: 60}, num_classes: 2}
model: {name: custom, target: "my_code:Tiny", kwargs: {hidden: 16}}
training: {epochs: 2, batch_size: 16}
""")
    result = Trainer(c, tmp_path, tmp_path / "run", run_id="r").fit()
    assert result.status == "completed" and len(result.metrics["epochs"]) == 2
    assert result.model.net[1].out_features == 16


EXTRA_DATA = """
def three(n=30):
    x = torch.zeros(n, 3, 8, 8)
    y = torch.arange(n) % 3
    return {"train": TensorDataset(x, y), "val": TensorDataset(x[:6], y[:6])}

def misnamed():
    return {"training": [], "validation": []}
"""


def test_custom_data_counts_its_classes_when_num_classes_is_null(tmp_path):
    """The template's promise, "inferred from the data when null": one more than the largest label."""
    (tmp_path / "my_classes.py").write_text(USER_CODE + EXTRA_DATA)
    data = build_data(cfg('data: {source: custom, target: "my_classes:three"}'), tmp_path)
    assert data.num_classes == 3
    assert build_data(cfg('data: {source: custom, target: "my_classes:three", num_classes: 5}'), tmp_path).num_classes == 5
    with pytest.raises(DataError, match=r"it returned a dict with keys 'training', 'validation'"):
        build_data(cfg('data: {source: custom, target: "my_classes:misnamed"}'), tmp_path)


def test_custom_target_that_does_not_import(tmp_path):
    c = cfg('model: {name: custom, target: "nowhere:Model"}')
    data = build_data(cfg(), tmp_path)
    with pytest.raises(UserInputError, match=r"model\.target = 'nowhere:Model': cannot import it"):
        build_model(c.model, 10, data.input_shape, tmp_path)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "efficientnet_b0", "simple_cnn"])
def test_models_take_six_bands(tmp_path, name):
    model = build_model(cfg(f"model: {{name: {name}}}").model, 5, (6, 32, 32), tmp_path).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 6, 32, 32)).shape == (2, 5)


def test_in_channels_mismatch_is_named(tmp_path):
    with pytest.raises(UserInputError, match=r"model\.in_channels is 3 but the data has 6 channels"):
        build_model(cfg("model: {in_channels: 3}").model, 5, (6, 32, 32), tmp_path)


@pytest.mark.parametrize("scheduler, lrs", [
    ("{name: step, step_size: 1, gamma: 0.5}", [1e-3, 5e-4, 2.5e-4]),
    ("{name: cosine, min_lr: 0.0}", [1e-3, 0.75e-3, 0.25e-3]),
    ("{name: plateau, patience: 0, factor: 0.5}", None),
])
def test_schedulers_step_per_epoch(tmp_path, scheduler, lrs):
    c = cfg(f"""
training: {{epochs: 3, scheduler: {scheduler}}}
early_stopping: {{enabled: false}}
checkpointing: {{save_best: false, save_last: false, checkpoint_every_n_epochs: 0}}
""")
    result = Trainer(c, tmp_path, None).fit()
    seen = [e["lr"] for e in result.metrics["epochs"]]
    if lrs:
        assert seen == pytest.approx(lrs)
    else:
        assert seen[0] == 1e-3 and all(b <= a for a, b in itertools.pairwise(seen))


NAN_CONFIG = """
training: {epochs: 1, optimizer: sgd, learning_rate: 1.0e4}
model: {batch_norm: false}
monitoring: {check_every_n_steps: 4}
"""


@pytest.mark.parametrize("windowed", [False, True])
def test_nonfinite_found_at_exact_step_on_both_paths(tmp_path, windowed):
    result = Trainer(cfg(NAN_CONFIG), tmp_path, tmp_path / "run", windowed=windowed).fit()
    info = result.metrics["nonfinite"]
    assert result.status == "failed_nan"
    rows = (tmp_path / "run" / "logs" / "steps.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    first_bad = next(i for i, v in enumerate([*losses, math.nan]) if not math.isfinite(v))
    assert info["step"] == first_bad == 2
    dump = load_checkpoint(tmp_path / "run" / info["dump"])
    assert dump["nonfinite_step"] == 2
    # the saved state is good, and replaying its batches from it reaches the offending step
    assert all(torch.isfinite(v).all() for v in dump["model"].values() if v.is_floating_point())
    expected_state_step = 0 if windowed else 2
    assert dump["state_step"] == expected_state_step
    assert len(dump["batches"]) == 2 - expected_state_step + 1
    # the dump loads back into the model and its optimizer, ready for a replay
    fresh = Trainer(cfg(NAN_CONFIG), tmp_path, None)
    fresh._build()
    fresh.model.load_state_dict(dump["model"])
    fresh.optimizer.load_state_dict(dump["optimizer"])


def test_windowed_and_per_step_paths_train_identically(tmp_path):
    c = cfg("training: {epochs: 1}\ncheckpointing: {save_best: false, save_last: false, checkpoint_every_n_epochs: 0}")
    a = Trainer(c, tmp_path, None, windowed=False).fit().model.state_dict()
    b = Trainer(c, tmp_path, None, windowed=True).fit().model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_channel_normalisation_uses_training_statistics(tmp_path):
    import numpy as np
    import torch

    from mlflow_core.config import load_config_text
    from mlflow_core.training.data.sources import build_data
    from mlflow_core.workflow.scaffold import write_patches

    write_patches(tmp_path / "p", bands=3, size=8, train=24, val=8)
    for split in ("train", "val"):  # raw digital numbers, one band offset far from the others
        for path in (tmp_path / "p" / split).glob("*.npz"):
            with np.load(path) as z:
                image, label = z["image"] * 10000.0, z["label"]
            image[2] += 5000.0
            np.savez(path, image=image, label=label)
    text = "data: {source: npz, path: p, normalize: per_channel}\ntraining: {device: cpu}\n"
    bundle = build_data(load_config_text(text, "t"), tmp_path)
    train = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    per_channel = train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-3)
    assert bundle.normalization["mean"][2] > 5000 and len(bundle.normalization["std"]) == 3
    assert bundle.train.labels() == bundle.train.base.labels()  # label-only access passes through
    val = bundle.val[0][0]
    assert val.abs().max() < 10  # val uses the training statistics
    raw = build_data(load_config_text(text.replace("per_channel", "none"), "t"), tmp_path)
    assert raw.normalization is None and raw.train[0][0].abs().max() > 1000


def test_mixed_precision_trains_and_checkpoints_its_scaler(tmp_path):
    import torch

    from mlflow_core.config import load_config_text
    from mlflow_core.training.checkpoint import load_checkpoint
    from mlflow_core.training.trainer import Trainer

    base = ("training: {device: cpu, epochs: 1, batch_size: 64, precision: %s}\nmodel: {channels: [8]}\n"
            "checkpointing: {save_best: false, checkpoint_every_n_epochs: 0}\n")
    for precision in ("bf16", "fp16"):
        run_dir = tmp_path / precision
        result = Trainer(load_config_text(base % precision, "t"), tmp_path, run_dir).fit()
        assert result.status == "completed", result.metrics.get("stop_reason")
        losses = [e["train_loss"] for e in result.metrics["epochs"]]
        assert all(isinstance(v, float) for v in losses)
        assert result.metrics["precision"]["mode"] == precision
        state = load_checkpoint(run_dir / "checkpoints" / "last_model.pt")
        assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
        if precision == "fp16":  # GradScaler on: its scale is saved for resumption
            assert result.metrics["precision"]["grad_scaler"] and state["grad_scaler"]["scale"] > 0
        else:
            assert state["grad_scaler"] is None


def test_trainer_matches_a_plain_loop_when_batches_divide_the_data(tmp_path):
    """`for batch in loader` lets the sampler draw its empty remainder permutation at the end of each
    epoch; the trainer must too, or later epochs see a different order than a plain loop's."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from mlflow_core.config import load_config_text
    from mlflow_core.training.data.datasets import DataBundle
    from mlflow_core.training.data.loader import make_loader
    from mlflow_core.training.models import build_model
    from mlflow_core.training.seeding import seed_everything
    from mlflow_core.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 8, 8, generator=g), torch.arange(128) % 4
    data = DataBundle(TensorDataset(x, y), TensorDataset(x[:32], y[:32]), None, 4, (1, 8, 8), "t")
    cfg = load_config_text("training: {device: cpu, epochs: 3, batch_size: 32}\nmodel: {channels: [8]}\n"
                           "early_stopping: {enabled: false}\n", "t")
    seed_everything(42, True)
    model = build_model(cfg.model, 4, (1, 8, 8), tmp_path)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
    loader = make_loader(data.train, cfg, train=True, device=torch.device("cpu"), seed=42)
    for _ in range(3):
        model.train()
        for inputs, targets in loader:
            loss = nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    trained = Trainer(cfg, tmp_path, None, data=data).fit().model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())


def test_classification_metrics_on_known_predictions():
    import torch

    from mlflow_core.training.evaluation import classification_metrics, expected_calibration_error

    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.full((6, 6), -10.0)
    for i, predicted in enumerate([0, 0, 1, 2, 2, 2]):  # one class-1 sample predicted as 2
        logits[i, targets[i]] = -5.0  # runner-up: inside the top 5 even when wrong
        logits[i, predicted] = 10.0
    m = classification_metrics(logits, targets, 6)
    assert m["accuracy"] == pytest.approx(5 / 6) and m["samples"] == 6 and m["top5_accuracy"] == 1.0
    assert m["confusion"][1] == [0, 1, 1, 0, 0, 0]
    by_class = {p["class"]: p for p in m["per_class"]}
    assert by_class[1]["recall"] == 0.5 and by_class[1]["precision"] == 1.0
    assert by_class[2]["precision"] == round(2 / 3, 4) and by_class[2]["recall"] == 1.0
    assert by_class[4]["support"] == 0  # absent classes do not count in the macro F1
    assert abs(m["macro_f1"] - (1 + 2 / 3 + 0.8) / 3) < 1e-3
    # confident and right: no calibration error; confident and wrong on a sixth: about 1/6
    assert expected_calibration_error(logits[[0, 1, 2, 4, 5]].softmax(1), targets[[0, 1, 2, 4, 5]]) < 1e-6
    assert abs(m["ece"] - 1 / 6) < 1e-3


def test_onnx_export_is_reloaded_and_compared(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from types import SimpleNamespace

    import torch

    from mlflow_core.config import load_config_text
    from mlflow_core.runners.finalization import export_model
    from mlflow_core.training.data.sources import build_data
    from mlflow_core.training.models import build_model
    from mlflow_core.workflow.project import Project

    cfg = load_config_text("training: {device: cpu}\nmodel: {channels: [8, 16]}\n", "t")
    data = build_data(cfg, tmp_path)
    model = build_model(cfg.model, 10, data.input_shape, tmp_path).eval()
    ctx = SimpleNamespace(project=Project(tmp_path), on_message=lambda _m: None)
    batch = torch.stack([data.val[i][0] for i in range(4)])
    (entry,) = export_model(model, cfg, data, tmp_path / "export", batch, ["onnx"], 1e-4, ctx)
    assert entry["verified"], entry["detail"]
    assert (tmp_path / "export" / "model.onnx").is_file() and entry["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("windowed", [False, True])
def test_a_resume_point_at_every_multiple_of_resume_every_n_steps_whatever_the_check_window(tmp_path, windowed):
    """resume_every_n_steps 7 with check windows of 10 steps: a resume point at step 7, 14, 21 …
    (the window closes at each), and a run cut after step 23 resumes from 21 to the same weights as
    an uninterrupted run."""
    from mlflow_core.training.checkpoint import weights_sha256

    cfg = load_config_text("training: {device: cpu, epochs: 2}\nmodel: {channels: [8]}\n"
                           "early_stopping: {enabled: false}\nmonitoring: {check_every_n_steps: 10}\n"
                           "checkpointing: {resume_every_n_steps: 7}\n", "t")
    seen = []

    def cut_at(p):  # progress comes once a window, before that step's resume point is written
        if p.stage == "train" and p.global_step >= 23:
            raise RuntimeError("the process dies here")

    def watch(p):
        path = tmp_path / "whole" / "checkpoints" / "resume.pt"
        if p.stage == "train" and path.is_file():
            seen.append(torch.load(path, weights_only=True)["global_step"])

    whole = Trainer(cfg, tmp_path, tmp_path / "whole", windowed=windowed, on_progress=watch)
    whole.fit()
    assert {7, 14, 21} <= set(seen)
    with pytest.raises(RuntimeError, match="dies here"):
        Trainer(cfg, tmp_path, tmp_path / "cut", windowed=windowed, on_progress=cut_at).fit()
    resume = tmp_path / "cut" / "checkpoints" / "resume.pt"
    assert torch.load(resume, weights_only=True)["global_step"] == 21
    resumed = Trainer(cfg, tmp_path, tmp_path / "cut", windowed=windowed, resume_from=resume)
    resumed.fit()
    assert weights_sha256(resumed.model.state_dict()) == weights_sha256(whole.model.state_dict())
