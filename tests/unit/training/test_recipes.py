"""Training recipes of the shared trainer (issue 6), each switched on by config and checked for the
outcome it promises: schedules step when and as torch's own schedulers do, accumulation equals a
bigger batch, mixing is on exactly for the epochs it should be, EMA weights are what validation and
checkpoints see, fine-tuning loads and freezes what it says, and every recipe resumes exactly."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.trainer import Trainer  # noqa: E402

BASE = ("training: {{device: cpu, epochs: {epochs}, {training}}}\nmodel: {{channels: [8, 16]{model}}}\n"
        "early_stopping: {{enabled: false}}\nmonitoring: {{check_every_n_steps: {window}}}\n{extra}")


def config(epochs: int = 2, training: str = "", model: str = "", extra: str = "", window: int = 10):
    text = BASE.format(epochs=epochs, training=training.strip(", ") or "batch_size: 32", model=model,
                       extra=extra, window=window)
    return load_config_text(text, "recipe.yaml")


def logged_lrs(run_dir) -> list[float]:
    with open(run_dir / "logs" / "steps.csv", newline="") as f:
        return [float(row["lr"]) for row in csv.DictReader(f)]


def reference_lrs(build, steps: int) -> list[float]:
    """The LR after each optimizer step of torch's own scheduler on a throwaway optimizer."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    scheduler = build(optimizer)
    out = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_recipe_onecycle_steps_every_optimizer_step_and_cycles_momentum(tmp_path):
    cfg = config(training="optimizer: sgd, learning_rate: 0.1, scheduler: {name: onecycle, max_lr: 0.1}", window=1)
    result = Trainer(cfg, tmp_path, tmp_path / "r").fit()
    steps = result.metrics["steps"]
    expected = reference_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=steps), steps)
    assert logged_lrs(tmp_path / "r") == pytest.approx(expected, rel=1e-9)
    assert max(expected) == pytest.approx(0.1, rel=1e-3) and expected[-1] < 1e-3 < expected[0] / 2  # rose, peaked, annealed


def test_recipe_onecycle_cycles_adams_beta1(tmp_path):
    cfg = config(training="optimizer: adam, learning_rate: 0.01, scheduler: {name: onecycle}")
    trainer = Trainer(cfg, tmp_path, None)
    trainer.fit(max_steps=10)
    beta1 = trainer.optimizer.param_groups[0]["betas"][0]
    assert 0.85 < beta1 < 0.95  # below max_momentum while the LR rises: it is being cycled


def test_recipe_warmup_cosine_matches_linear_then_cosine(tmp_path):
    cfg = config(training="learning_rate: 0.1, optimizer: sgd, scheduler: {name: warmup_cosine, warmup_epochs: 0.5, "
                          "min_lr: 0.001}", window=1)
    result = Trainer(cfg, tmp_path, tmp_path / "r").fit()
    steps = result.metrics["steps"]
    warmup = round(0.5 * steps / 2)
    lr_scheduler = torch.optim.lr_scheduler

    def build(o):
        return lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.01, 1.0, total_iters=warmup),
                                             lr_scheduler.CosineAnnealingLR(o, T_max=steps - warmup, eta_min=0.001)],
                                         milestones=[warmup])

    lrs = logged_lrs(tmp_path / "r")
    assert lrs == pytest.approx(reference_lrs(build, steps), rel=1e-9)
    assert lrs[0] < 0.01 and max(lrs) == pytest.approx(0.1, rel=0.02) and lrs[-1] == pytest.approx(0.001, rel=1e-6)


def test_recipe_linear_lr_scaling_uses_the_effective_batch(tmp_path):
    cfg = config(training="learning_rate: 0.1, batch_size: 32, accumulate_steps: 2, lr_scaling: linear")
    trainer = Trainer(cfg, tmp_path, None)
    result = trainer.fit(max_steps=2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 64 / 256)
    assert result.metrics["recipe"]["learning_rate"] == pytest.approx(0.025)
    assert result.metrics["recipe"]["effective_batch"] == 64


def test_recipe_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    """Two micro-batches of 16 make the step one batch of 32 makes (the sampler's order does not
    depend on the batch size): same weights after 40 steps, to float rounding. Without BatchNorm,
    whose batch statistics see 16 samples at a time, by design."""
    body = "optimizer: sgd, learning_rate: 0.05"
    big = Trainer(config(training=f"{body}, batch_size: 32", model=", batch_norm: false"), tmp_path, None)
    big.fit(max_steps=40)
    small = Trainer(config(training=f"{body}, batch_size: 16, accumulate_steps: 2", model=", batch_norm: false"),
                    tmp_path, None)
    small.fit(max_steps=40)
    a, b = big.model.state_dict(), small.model.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=2e-5), key
    assert small.steps_per_epoch == big.steps_per_epoch


def test_recipe_label_smoothing_lowers_confidence(tmp_path):
    def confidence(smoothing: float) -> float:
        cfg = config(epochs=4, training=f"label_smoothing: {smoothing}, learning_rate: 0.003")
        trainer = Trainer(cfg, tmp_path, None)
        model = trainer.fit().model.eval()
        inputs = torch.stack([trainer.data.val[i][0] for i in range(200)])
        with torch.no_grad():
            return float(model(inputs).softmax(1).max(1).values.mean())

    assert confidence(0.2) < confidence(0.0) - 0.05


def test_recipe_mixup_cutmix_switch_off_for_the_last_epochs(tmp_path):
    cfg = config(epochs=3, extra="augmentation: {mixup_alpha: 0.2, cutmix_alpha: 1.0, mix_off_last_fraction: 0.34}")
    result = Trainer(cfg, tmp_path, None).fit()
    assert [e["mixed"] for e in result.metrics["epochs"]] == [True, True, False]
    assert result.metrics["recipe"]["mixing_last_epoch"] == 2
    # mixed labels are class probabilities: the mixer gives soft targets with the same batch shape
    from mlflow_core.training.augment import BatchMixer
    mixer = BatchMixer(cfg.augmentation, 10, 3, (1, 8, 8))
    inputs, targets = mixer(torch.rand(8, 1, 8, 8), torch.arange(8))
    assert inputs.shape == (8, 1, 8, 8) and targets.shape == (8, 10)
    assert torch.allclose(targets.sum(1), torch.ones(8)) and (targets.max(1).values < 1).any()


def test_recipe_mixing_needs_images(tmp_path):
    from mlflow_core.errors import UserInputError
    from mlflow_core.training.augment import BatchMixer

    cfg = config(extra="augmentation: {mixup_alpha: 0.2}")
    with pytest.raises(UserInputError, match="need image samples"):
        BatchMixer(cfg.augmentation, 10, 2, (64,))


def test_recipe_random_resized_crop_trains_and_evaluates_at_the_crop_size(tmp_path):
    cfg = config(extra="augmentation: {random_resized_crop: 16, crop_scale: [0.5, 1.0], horizontal_flip: 0.5}")
    trainer = Trainer(cfg, tmp_path, None)
    trainer.fit(max_steps=3)
    assert trainer.data.input_shape == (1, 16, 16)
    assert trainer.data.train[0][0].shape == (1, 16, 16) and trainer.data.val[0][0].shape == (1, 16, 16)
    assert torch.equal(trainer.data.val[3][0], trainer.data.val[3][0])  # evaluation views are not random


def test_recipe_ema_is_what_validation_and_checkpoints_see(tmp_path):
    from mlflow_core.training.checkpoint import load_checkpoint

    cfg = config(training="learning_rate: 0.003, ema: {enabled: true, decay: 0.9}")
    trainer = Trainer(cfg, tmp_path, tmp_path / "r")
    result = trainer.fit()
    last = result.metrics["epochs"][-1]
    assert last["val_accuracy"] == last["ema_val_accuracy"] and "raw_val_accuracy" in last
    assert result.model is trainer.ema.module
    saved = load_checkpoint(tmp_path / "r" / "checkpoints" / "last_model.pt")
    assert saved["ema_weights"] is True
    ema, raw = trainer.ema.module.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(saved["model"][k], ema[k]) for k in ema)
    assert not all(torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())


def test_recipe_channels_last_trains_like_the_default_layout(tmp_path):
    plain = Trainer(config(), tmp_path, None)
    plain.fit(max_steps=10)
    nhwc = Trainer(config(training="batch_size: 32, channels_last: true"), tmp_path, None)
    nhwc.fit(max_steps=10)
    weight = nhwc.model.features[4].weight  # 16×8×3×3: the two layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    a, b = plain.model.state_dict(), nhwc.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_recipe_tf32_flags_follow_the_config(tmp_path):
    Trainer(config(training="batch_size: 32, tf32: true"), tmp_path, None).fit(max_steps=1)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    Trainer(config(), tmp_path, None).fit(max_steps=1)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


COMPILE_WITHOUT_A_COMPILER = """
import json, sys
import torch._inductor.config as inductor_config
inductor_config.cpp.cxx = (None, sys.argv[1])
from tests.unit.training.test_recipes import Trainer, config
result = Trainer(config(training="batch_size: 32, compile: true"), __import__("pathlib").Path("."), None).fit(max_steps=5)
print(json.dumps({"recipe": result.metrics["recipe"], "anomalies": result.anomalies, "steps": result.metrics["steps"]}))
"""


def test_recipe_compile_failure_falls_back_to_eager_and_says_why(tmp_path):
    """A machine without a working C++ compiler (Windows, slim containers): inductor cannot build
    its CPU kernels, and training goes on eagerly with the reason recorded. In a fresh process,
    because inductor caches what it learns about the compiler."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing compiled before
    done = subprocess.run([sys.executable, "-c", COMPILE_WITHOUT_A_COMPILER, str(tmp_path / "no-such-g++")],
                          cwd=Path(__file__).resolve().parents[3], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["recipe"]["compile"] == "failed, eager" and result["steps"] == 5
    assert [a["kind"] for a in result["anomalies"]] == ["compile_fallback"]
    assert "C++ compiler" in result["anomalies"][0]["message"]


def test_recipe_compile_trains_like_eager_on_the_cpu(tmp_path):
    """A real torch.compile (inductor, C++ on the CPU) of simple_cnn: same weights as eager, to
    float rounding, after a few steps."""
    torch._dynamo.reset()
    eager = Trainer(config(training="batch_size: 32, optimizer: sgd, learning_rate: 0.05"), tmp_path, None)
    eager.fit(max_steps=4)
    compiled = Trainer(config(training="batch_size: 32, optimizer: sgd, learning_rate: 0.05, compile: true"),
                       tmp_path, None)
    result = compiled.fit(max_steps=4)
    assert result.metrics["recipe"]["compile"] == "requested" and not result.anomalies
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_recipe_fine_tuning_loads_fitting_weights_and_freezes_layers(tmp_path):
    from mlflow_core.errors import UserInputError

    source = Trainer(config(), tmp_path, tmp_path / "source").fit()
    pretrained = source.model.state_dict()
    cfg = config(model=", init_from: source/checkpoints/last_model.pt, freeze: [features.0, features.1]")
    tuned = Trainer(cfg, tmp_path, None)
    result = tuned.fit(max_steps=20)
    after = tuned.model.state_dict()
    for key in ("features.0.weight", "features.1.weight", "features.1.bias"):
        assert torch.equal(after[key], pretrained[key]), key  # loaded and frozen
    assert not torch.equal(after["features.4.weight"], pretrained["features.4.weight"])  # loaded, trained
    recipe = result.metrics["recipe"]
    assert recipe["init_from"]["loaded"] == recipe["init_from"]["of"] and recipe["frozen"]["tensors"] == 3
    with pytest.raises(UserInputError, match="matches no parameter"):
        Trainer(config(model=", freeze: [encoder]"), tmp_path, None).fit(max_steps=1)
    with pytest.raises(UserInputError, match="outside the project"):
        Trainer(config(model=", init_from: ../elsewhere.pt"), tmp_path, None).fit(max_steps=1)


def test_recipe_fine_tuning_keeps_a_new_classifier_fresh(tmp_path):
    source = Trainer(config(), tmp_path, tmp_path / "source").fit(max_steps=3)
    assert source.status in ("completed", "early_stopped")
    torch.save({"features.0.weight": torch.zeros(8, 1, 3, 3), "classifier.weight": torch.zeros(3, 16)},
               tmp_path / "plain.pt")  # a plain state dict whose classifier has 3 classes, not 10
    trainer = Trainer(config(model=", init_from: plain.pt"), tmp_path, None)
    result = trainer.fit(max_steps=1)
    init = result.metrics["recipe"]["init_from"]
    assert init["loaded"] == 1 and init["shape_mismatch"] == ["classifier.weight"]


def test_recipes_resume_exactly(tmp_path):
    """Mixing, EMA, accumulation, label smoothing and a per-step schedule together, stopped by a
    signal mid-epoch: the resumed run ends with the uninterrupted run's weights, bit for bit."""
    cfg = config(epochs=3, training="batch_size: 16, accumulate_steps: 2, label_smoothing: 0.1, "
                                    "scheduler: {name: warmup_cosine, warmup_epochs: 1}, "
                                    "ema: {enabled: true, decay: 0.95}",
                 extra="augmentation: {mixup_alpha: 0.4, cutmix_alpha: 1.0, mix_probability: 0.7, "
                       "horizontal_flip: 0.5, mix_off_last_fraction: 0.34}")
    full = Trainer(cfg, tmp_path, tmp_path / "full").fit()

    def stop(p):
        if p.stage == "train" and p.global_step == 30:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = Trainer(cfg, tmp_path, tmp_path / "cut", on_progress=stop, stop_on_signals=True).fit()
    assert cut.status == "interrupted" and cut.metrics["steps"] == 30
    resumed = Trainer(cfg, tmp_path, tmp_path / "cut", resume_from=tmp_path / "cut" / "checkpoints" / "resume.pt")
    done = resumed.fit()
    assert done.metrics["steps"] == full.metrics["steps"]
    a, b = full.model.state_dict(), done.model.state_dict()  # the EMA weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["val_loss"] for e in done.metrics["epochs"]] == [e["val_loss"] for e in full.metrics["epochs"]]


def test_recipe_mcc_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    from mlflow_core.training.evaluation import classification_metrics

    generator = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 4, (500,), generator=generator)
    logits = torch.randn(500, 4, generator=generator)
    logits[torch.arange(500), targets] += 1.0
    metrics = classification_metrics(logits, targets, 4)
    assert metrics["mcc"] == pytest.approx(sklearn.matthews_corrcoef(targets, logits.argmax(1)), abs=1e-12)


CURRICULUM = ("curriculum: {stages: [{epochs: 1, image_size: 16, batch_size: 16, data_fraction: 0.5, "
              "freeze: [features.0, features.1]}, {epochs: 2, batch_size: 32, lr_scale: 0.5}]}")


def test_recipe_curriculum_stages_change_data_size_batch_lr_and_freezing(tmp_path):
    cfg = config(epochs=3, training="learning_rate: 0.002", extra=CURRICULUM)
    trainer = Trainer(cfg, tmp_path, tmp_path / "r")
    weights = {}
    trainer.on_epoch = lambda epoch, _value: weights.update(
        {epoch: trainer.model.features[0].weight.detach().clone()}) or False
    result = trainer.fit()
    stages = result.metrics["stages"]
    assert [s["stage"] for s in stages] == [1, 2] and [s["epochs"] for s in stages] == [[1, 1], [2, 3]]
    assert stages[0]["samples"] == 719 and stages[0]["steps_per_epoch"] == 45  # half the data, batches of 16
    assert stages[1]["samples"] == 1438 and stages[1]["steps_per_epoch"] == 45
    assert stages[0]["frozen_tensors"] == 3 and stages[1]["frozen_tensors"] == 0
    assert stages[1]["learning_rate"] == pytest.approx(0.001)  # the LR scaled by 0.5 from stage 2 on
    assert [e["stage"] for e in result.metrics["epochs"]] == [1, 2, 2]
    assert [e["lr"] for e in result.metrics["epochs"]] == pytest.approx([0.002, 0.001, 0.001])
    initial = Trainer(cfg, tmp_path, None)
    initial._build()
    assert torch.equal(weights[1], initial.model.features[0].weight)  # frozen through stage 1
    assert not torch.equal(weights[2], weights[1])  # trained in stage 2
    assert trainer.train_loader.dataset[0][0].shape == (1, 8, 8)  # stage 2: the native size again


def test_recipe_curriculum_with_onecycle_spans_all_stages_and_resumes_exactly(tmp_path):
    cfg = config(epochs=3, training="learning_rate: 0.01, optimizer: sgd, scheduler: {name: onecycle}",
                 extra=CURRICULUM, window=1)
    full = Trainer(cfg, tmp_path, tmp_path / "full").fit()
    assert full.metrics["steps"] == 45 + 2 * 45
    lrs = logged_lrs(tmp_path / "full")
    assert lrs[-1] < 1e-4 and max(lrs[:45]) > max(lrs[45:])  # one cycle over all 135 steps, halved in stage 2

    def stop(p):
        if p.stage == "train" and p.global_step == 60:  # inside stage 2
            os.kill(os.getpid(), signal.SIGTERM)

    cut = Trainer(cfg, tmp_path, tmp_path / "cut", on_progress=stop, stop_on_signals=True).fit()
    assert cut.status == "interrupted"
    done = Trainer(cfg, tmp_path, tmp_path / "cut", resume_from=tmp_path / "cut" / "checkpoints" / "resume.pt").fit()
    a, b = full.model.state_dict(), done.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [s["stage"] for s in done.metrics["stages"]] == [1, 2]


def test_recipe_curriculum_must_add_up(tmp_path):
    from mlflow_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"add up to 2, and training\.epochs is 3"):
        config(epochs=3, extra="curriculum: {stages: [{epochs: 1}, {epochs: 1}]}")
    with pytest.raises(ConfigError, match="mixing is on"):
        config(epochs=1, extra="curriculum: {stages: [{epochs: 1, mixing: true}]}")


def test_recipe_macro_f1_matches_scikit_learn_and_is_a_validation_metric(tmp_path):
    """Validation's macro F1 (from its confusion matrix) equals scikit-learn's over the labels seen,
    a class predicted but never true included; `validation.metric: val_f1` selects the best epoch."""
    sklearn = pytest.importorskip("sklearn.metrics")
    from mlflow_core.training.evaluation import classification_metrics

    generator = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 4, (300,), generator=generator)  # class 4 never true ...
    logits = torch.randn(300, 5, generator=generator)
    logits[:10, 4] += 10  # ... and sometimes predicted
    ours = classification_metrics(logits, targets, 5)["macro_f1"]
    assert ours == pytest.approx(sklearn.f1_score(targets, logits.argmax(1), average="macro"), abs=1e-12)
    cfg = load_config_text("training: {device: cpu, epochs: 3, learning_rate: 0.01}\n"
                           "model: {channels: [8, 16]}\nvalidation: {metric: val_f1}\n", "t")
    result = Trainer(cfg, tmp_path, None).fit()
    f1s = [e["val_f1"] for e in result.metrics["epochs"]]
    assert result.metrics["best"] == {"metric": "val_f1", "value": max(f1s), "epoch": f1s.index(max(f1s)) + 1}
    assert 0.5 < max(f1s) <= 1


def test_recipe_keep_best_keeps_the_n_best_epochs_across_a_resume(tmp_path):
    """checkpointing.keep_best: 2 keeps exactly the two best epochs by the validation metric, best
    first; a resumed run drops what the interrupted process left that the restored list does not name."""
    from mlflow_core.training.checkpoint import load_checkpoint

    cfg = load_config_text("training: {device: cpu, epochs: 4, learning_rate: 0.01}\nmodel: {channels: [8]}\n"
                           "early_stopping: {enabled: false}\ncheckpointing: {keep_best: 2}\n", "t")
    run = tmp_path / "run"

    def signal_in_epoch_3(p):
        if p.stage == "train" and p.global_step >= 100 and not getattr(signal_in_epoch_3, "sent", False):
            signal_in_epoch_3.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    cut = Trainer(cfg, tmp_path, run, on_progress=signal_in_epoch_3, stop_on_signals=True).fit()
    assert cut.status == "interrupted" and len(cut.metrics["epochs"]) == 2
    assert len(list((run / "checkpoints" / "top").glob("*.pt"))) == 2
    (run / "checkpoints" / "top" / "epoch_099.pt").write_bytes(b"left by a killed process")
    done = Trainer(cfg, tmp_path, run, stop_on_signals=True, resume_from=run / "checkpoints" / "resume.pt").fit()
    losses = {e["epoch"]: e["val_loss"] for e in done.metrics["epochs"]}
    best_two = sorted(losses, key=losses.get)[:2]
    top = done.metrics["checkpoints"]["top"]
    assert [e["epoch"] for e in top] == best_two and [e["value"] for e in top] == [losses[e] for e in best_two]
    assert sorted(p.name for p in (run / "checkpoints" / "top").iterdir()) == sorted(
        f"epoch_{e:03d}.pt" for e in best_two)
    for entry in top:
        assert load_checkpoint(run / entry["path"])["epoch"] == entry["epoch"]
    assert done.metrics["checkpoints"]["best"]["epoch"] == best_two[0]


def test_a_curriculum_stage_on_part_of_the_data_trains_at_its_own_image_size():
    """A stage with a data fraction is a Subset resized by a wrapper; the DataLoader gathers a batch
    through `__getitems__` when the dataset has one, and a wrapper that passed that dunder on to its
    Subset returned the un-resized images (8×8 where the stage asks 12×12). Found through the weight
    digests when wrappers stopped passing dunders on."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from mlflow_core.config.schema import WorkflowConfig
    from mlflow_core.training.curriculum import stage_train_data
    from mlflow_core.training.data.loader import collate_batches

    cfg = WorkflowConfig.model_validate({"training": {"epochs": 1}, "curriculum": {"stages": [
        {"epochs": 1, "image_size": 12, "data_fraction": 0.5}]}})
    train = TensorDataset(torch.rand(40, 1, 8, 8), torch.arange(40) % 4)
    data = stage_train_data(train, cfg.curriculum.stages[0], 0, (1, 8, 8))
    x, _ = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_batches)))
    assert tuple(x.shape) == (4, 1, 12, 12)
