"""`wf diagnose` on runs broken in their training dynamics: real digits runs, real probes."""

import json

from mlflow_core.config import load_config
from mlflow_core.workflow.scaffold import set_yaml_value

DEAD_MLP = """
from torch import nn

class DeadMLP(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)
        nn.init.constant_(self.body[1].bias, -4.0)  # every unit of the first layer starts (and stays) dead

    def forward(self, x):
        return self.head(self.body(x))
"""


def _trained(wf, tmp_path, edits, files=None):
    assert wf("init", "d", cwd=tmp_path).code == 0
    d = tmp_path / "d"
    config = d / "training_config.yaml"
    text = config.read_text()
    for key, value in [("training.epochs", "3"), *edits]:
        text = set_yaml_value(text, key, value)
    config.write_text(text)
    for name, content in (files or {}).items():
        (d / name).write_text(content)
    assert wf("phase", "setup", cwd=d).code == 0
    wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=d)
    assert wf("phase", "baseline", cwd=d).code in (0, 1)  # completes; misses its target
    return d


def test_dead_relu_at_init_ranks_first_with_its_picture(wf, tmp_path):
    d = _trained(wf, tmp_path, [("model.name", "custom"), ("model.target", '"deadmlp:DeadMLP"')],
                 {"deadmlp.py": DEAD_MLP})
    r = wf("diagnose", "auto", "--json", cwd=d)
    assert r.code == 0, r.err
    findings = json.loads(r.out)["findings"]
    assert (findings[0]["diagnostic"], findings[0]["cause"]) == ("dead_relu", "dead_at_init")
    assert findings[0]["evidence"]["layer"] == "body.2" and findings[0]["evidence"]["dead_fraction"] == 1.0
    others = {f["diagnostic"] for f in findings[1:]}
    assert others <= {"convergence_stall", "vanishing_gradients", "underfitting"}
    report = (d / "reports" / "diagnosis_auto.md").read_text()
    assert "figures/diagnosis_auto_dead_units.png" in report
    assert (d / "reports" / "figures" / "diagnosis_auto_dead_units.png").stat().st_size > 1000


def test_lr_too_low_is_found_by_the_range_test_and_fixed_by_a_trial(wf, tmp_path):
    d = _trained(wf, tmp_path, [("training.learning_rate", "1.0e-7")])
    before = (d / "training_config.yaml").read_text()
    r = wf("diagnose", "convergence_stall", "--fix", "--json", cwd=d)
    assert r.code == 0, r.err
    out = json.loads(r.out)
    top = out["findings"][0]
    assert top["cause"] == "lr_too_low" and top["evidence"]["suggested_lr"] > 1e-5
    assert out["trials"] and out["trials"][-1]["winner"]
    assert (d / "training_config.yaml").read_text() == before
    suggested = load_config(d / "configs" / "suggested_convergence_stall.yaml")
    assert suggested.training.learning_rate > 1e-6
    report = (d / "reports" / "diagnosis_convergence_stall.md").read_text()
    assert "figures/diagnosis_convergence_stall_lr_range.png" in report and "LR range test" in report
