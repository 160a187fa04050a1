"""`wf diagnose nan_loss` on real failing runs: the cause is ranked right, probes name the op, and
--fix verifies a change by trial runs without touching the user's config."""

import json

import numpy as np
import pytest

from mlflow_core.config import load_config
from mlflow_core.workflow.scaffold import set_yaml_value
from tests.reference_tools import assert_renders_on_github


def _failing_project(wf, tmp_path, edits, example="digits", files=None, override=False):
    assert wf("init", "d", "--example", example, cwd=tmp_path).code == 0
    d = tmp_path / "d"
    config = d / "training_config.yaml"
    text = config.read_text()
    for key, value in edits:
        text = set_yaml_value(text, key, value)
    config.write_text(text)
    for name, content in (files or {}).items():
        (d / name).write_text(content)
    wf("phase", "setup", cwd=d)
    wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=d)
    args = ["phase", "baseline"] + (["--override-gate", "diagnosing a broken dataset"] if override else [])
    assert wf(*args, cwd=d).code == 1
    return d


# the template's wider simple_cnn: within the fix ladder's 60-step trials it learns at lr 0.1 without
# BatchNorm, which the digits example's narrower one does not
LR_1E4 = [("training.optimizer", "sgd"), ("training.learning_rate", "1.0e4"), ("model.batch_norm", "false"),
          ("model.channels", "[32, 64, 128, 256]")]


def test_lr_too_high_is_found_and_a_fix_verified(wf, tmp_path):
    d = _failing_project(wf, tmp_path, LR_1E4)
    r = wf("diagnose", "nan_loss", "--json", cwd=d)
    assert r.code == 0, r.err
    out = json.loads(r.out)
    top = out["findings"][0]
    assert top["cause"] == "lr_too_high" and top["confidence"] >= 0.9
    assert set(top) >= {"diagnostic", "cause", "confidence", "evidence", "fix"}
    assert "unstable_op" not in [f["cause"] for f in out["findings"]]  # overflow from blown-up weights
    report = (d / "reports" / "diagnosis_nan_loss.md").read_text()
    assert_renders_on_github(d / "reports" / "diagnosis_nan_loss.md", d)
    assert "`lr_too_high`" in report and "figures/diagnosis_nan_loss_curve.png" in report

    before = (d / "training_config.yaml").read_text()
    r = wf("diagnose", "nan_loss", "--fix", cwd=d)
    assert r.code == 0, r.err
    assert "Plan: up to " in r.out and "stopping at the first fix that removes the symptom" in " ".join(r.out.split())
    assert (d / "training_config.yaml").read_text() == before  # never edited silently
    suggested = d / "configs" / "suggested_nan_loss.yaml"
    cfg = load_config(suggested)
    assert cfg.training.learning_rate < 1e4
    assert "verified by a" in suggested.read_text() and "# conservative LR" in suggested.read_text()
    history = json.loads((d / ".wf" / "state.json").read_text())["history"]
    assert history[-1]["event"] == "diagnosis" and history[-1]["verified_fix"]


LOG_MODEL = """
import torch
from torch import nn

class LogNet(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.fc = nn.Linear(in_channels * 64, num_classes)

    def forward(self, x):
        return torch.log(torch.relu(self.fc(x.flatten(1))))  # log(0) = -inf
"""


def test_unstable_op_names_the_op(wf, tmp_path):
    d = _failing_project(wf, tmp_path, [("model.name", "custom"), ("model.target", '"lognet:LogNet"')],
                         files={"lognet.py": LOG_MODEL})
    out = json.loads(wf("diagnose", "nan_loss", "--json", cwd=d).out)
    top = out["findings"][0]
    assert top["cause"] == "unstable_op", out["findings"]
    assert top["evidence"]["forward_op"] == "log"
    assert "LogNet.forward" in top["evidence"]["first_module"]


def test_nonfinite_inputs(wf, tmp_path):
    assert wf("init", "lab", "--example", "patches", cwd=tmp_path).code == 0
    train = sorted((tmp_path / "lab" / "data" / "patches" / "train").glob("*.npz"))
    for path in train[:40]:
        sample = np.load(path)
        image = sample["image"].copy()
        image[0, 0, 0] = np.nan
        np.savez(path, image=image, label=sample["label"])
    (tmp_path / "lab").rename(tmp_path / "src")
    d = tmp_path / "d"
    (tmp_path / "src").rename(d)
    wf("phase", "setup", cwd=d)  # finds the NaN samples: its gate stays closed
    wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=d)
    assert wf("phase", "baseline", "--override-gate", "diagnosing a broken dataset", cwd=d).code == 1
    out = json.loads(wf("diagnose", "nan_loss", "--json", cwd=d).out)
    assert out["findings"][0]["cause"] == "nonfinite_inputs"
    r = wf("diagnose", "nan_loss", "--fix", cwd=d)
    assert r.code == 0 and not (d / "configs" / "suggested_nan_loss.yaml").exists()  # no config fixes data


def test_healthy_run_has_no_finding(wf, project_copy):
    out = json.loads(wf("diagnose", "nan_loss", "--json", cwd=project_copy).out)
    assert out["findings"] == [] and "all" in out["probes"]["note"]


def test_unknown_diagnostic(wf, project_copy):
    r = wf("diagnose", "astrology", cwd=project_copy)
    assert r.code == 2 and "unknown diagnostic 'astrology'" in r.err and "dead_relu" in r.err


@pytest.mark.parametrize("name", ["vanishing_gradients", "dead_relu", "convergence_stall", "underfitting",
                                  "resource_inefficiency"])
def test_dynamics_diagnostics_on_a_healthy_run_find_nothing(wf, project_copy, name):
    r = wf("diagnose", name, "--json", cwd=project_copy)
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["findings"] == [], out["findings"]
    assert (project_copy / "reports" / f"diagnosis_{name}.md").is_file()


def test_auto_on_a_healthy_run_finds_nothing(wf, project_copy):
    r = wf("diagnose", "auto", "--json", cwd=project_copy)
    assert r.code == 0, r.err
    assert json.loads(r.out)["findings"] == []
    report = (project_copy / "reports" / "diagnosis_auto.md").read_text()
    assert report.count("No finding") == 1
    assert_renders_on_github(project_copy / "reports" / "diagnosis_auto.md", project_copy)
    # what was measured, not only that nothing fired
    assert "| Diagnostic | Measure | Value |" in report and "| overfitting | validated_epochs | " in report
    assert "| data_leakage | overlap_train_val | 0 |" in report
    assert "| class_imbalance | class_counts_train | (10 values) |" in report  # not one row per class


def test_auto_ranks_a_leak(wf, tmp_path):
    import shutil
    assert wf("init", "lab", "--example", "patches", cwd=tmp_path).code == 0
    lab = tmp_path / "lab"
    train = sorted((lab / "data" / "patches" / "train").glob("*.npz"))
    for path in train[:12]:  # 12 of 60 val samples now also in train
        shutil.copy(path, lab / "data" / "patches" / "val" / f"dup_{path.name}")
    config = lab / "training_config.yaml"
    config.write_text(set_yaml_value(config.read_text(), "training.epochs", "2"))
    assert wf("phase", "setup", cwd=lab).code == 1  # setup sees the overlap: its gate stays closed
    wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=lab)
    wf("phase", "baseline", "--override-gate", "measuring the leak", cwd=lab)
    out = json.loads(wf("diagnose", "auto", "--json", cwd=lab).out)
    top = out["findings"][0]
    assert (top["diagnostic"], top["cause"]) == ("data_leakage", "train_val_overlap")
    assert top["evidence"]["identical_samples"] == 12
    report = (lab / "reports" / "diagnosis_auto.md").read_text()
    assert "train_val_overlap" in report and "no config change can be verified" not in report


def test_phase_3_closes_the_loop(wf, tmp_path):
    """NaN baseline → decide diagnose → wf phase diagnostics → apply the verified fix → rebaseline."""
    d = _failing_project(wf, tmp_path, LR_1E4)
    assert wf("gate", "check", "baseline", cwd=d).code == 1  # the full baseline gate stays closed
    assert wf("phase", "diagnostics", cwd=d).code == 3  # no decision yet
    assert wf("decide", "diagnose", "--reason", "NaN at step 2", cwd=d).code == 0
    r = wf("phase", "diagnostics", cwd=d)
    assert r.code == 0, r.err + r.out[-3000:]
    report = (d / "reports" / "diagnosis_auto.md").read_text()
    assert "`lr_too_high`" in report and "Fix trials" in report
    gate = json.loads(wf("gate", "check", "diagnostics", "--json", cwd=d).out)
    checked = {i["id"]: i["checked"] for i in gate["items"]}
    assert checked == {"root_cause_identified": True, "fix_verified": True, "report_generated": True,
                       "fix_applied": False, "decision_made": False}
    # apply the fix the trial verified, then go back to baseline
    (d / "training_config.yaml").write_text((d / "configs" / "suggested_nan_loss.yaml").read_text())
    assert wf("checklist", "tick", "post_diagnostics", "fix_applied", cwd=d).code == 0
    assert wf("decide", "rebaseline", "--reason", "lr 0.1 verified", cwd=d).code == 0
    r = wf("phase", "baseline", cwd=d)
    assert r.code == 0, r.out[-3000:]
    state = json.loads((d / ".wf" / "state.json").read_text())
    assert [r["phase"] for r in state["runs"]][-3:] == ["baseline", "diagnostics", "baseline"]
    assert state["entered_from"]["baseline"] == "diagnostics"


def test_help_names_every_diagnostic(wf):
    from mlflow_core.diagnostics import DIAGNOSTICS

    out = wf("diagnose", "--help").out
    assert all(name in out for name in DIAGNOSTICS), [n for n in DIAGNOSTICS if n not in out]


RAW_COUNTS = """
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset


def raw_digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) * 6000.0  # raw counts, up to ~1e5
    y = torch.tensor(d.target)
    return {"train": TensorDataset(x[:1400], y[:1400]), "val": TensorDataset(x[1400:], y[1400:])}


class MLP(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.net(x)
"""


def test_amp_overflow_is_proved_by_an_fp32_replay_and_fixed_by_bf16(wf, tmp_path):
    d = _failing_project(wf, tmp_path, [
        ("data.source", "custom"), ("data.target", '"rawcounts:raw_digits"'), ("data.num_classes", "10"),
        ("model.name", "custom"), ("model.target", '"rawcounts:MLP"'), ("training.precision", "fp16")],
        files={"rawcounts.py": RAW_COUNTS}, override=True)  # setup flags the input range; a person overrides
    out = json.loads(wf("diagnose", "auto", "--json", cwd=d).out)
    top = out["findings"][0]
    assert (top["diagnostic"], top["cause"]) == ("nan_loss", "amp_overflow")
    assert top["evidence"]["precision"] == "fp16" and top["evidence"]["fp32_loss"] > 0
    assert "input_scaling" in [f["diagnostic"] for f in out["findings"]]  # the root of the overflow, also named
    r = wf("diagnose", "nan_loss", "--fix", "--json", cwd=d)
    assert r.code == 0, r.err
    fixed = json.loads(r.out)
    assert fixed["trials"][0]["label"] == "bf16 instead of fp16" and fixed["trials"][0]["winner"]
    assert load_config(d / "configs" / "suggested_nan_loss.yaml").training.precision == "bf16"
