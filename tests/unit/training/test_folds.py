"""k-fold cross-validation and ensembles of the final models (folds × seeds, averaged
predictions)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_recipe_kfold_indices_are_disjoint_cover_and_stratify():
    from mlflow_core.training.folds import kfold_indices

    labels = [0] * 50 + [1] * 30 + [2] * 20
    folds = kfold_indices(100, 5, seed=0, labels=labels)
    flat = sorted(i for f in folds for i in f)
    assert flat == list(range(100)) and [len(f) for f in folds] == [20] * 5
    for fold in folds:  # each fold holds every class in its overall proportion
        assert [sum(labels[i] == c for i in fold) for c in range(3)] == [10, 6, 4]
    assert kfold_indices(100, 5, seed=0, labels=labels) == folds  # seeded
    assert kfold_indices(100, 5, seed=1, labels=labels) != folds


def test_recipe_ensemble_averages_probabilities():
    from mlflow_core.training.folds import ensemble_log_probabilities

    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    combined = ensemble_log_probabilities([a, b]).softmax(1)
    assert torch.allclose(combined, torch.tensor([[0.5, 0.5]]))


def test_recipe_kfold_seed_ensemble_in_finalization(wf, tmp_path):
    from mlflow_core.workflow.scaffold import set_yaml_value

    assert wf("init", "p", cwd=tmp_path).code == 0
    root = tmp_path / "p"
    config = root / "training_config.yaml"
    text = config.read_text()
    for key, value in (("finalization.folds", "3"), ("finalization.seeds", "2"), ("training.epochs", "3")):
        text = set_yaml_value(text, key, value)
    config.write_text(text)
    r = wf("phase", "finalization", "--override-gate", "cross-validation test", cwd=root)
    assert r.code == 0, r.out[-2000:] + r.err
    facts = json.loads((root / ".wf" / "evidence" / "finalization.json").read_text())["facts"]
    members = facts["seeds"]
    assert [(m["fold"], m["seed"]) for m in members] == [(f, s) for f in range(3) for s in (42, 43)]
    crossval = facts["crossval"]
    assert crossval["folds"] == 3 and crossval["stratified"] and sum(crossval["fold_sizes"]) == crossval["samples"]
    assert len(crossval["val_best"]["values"]) == 6
    ensemble = facts["ensemble"]["test"]
    assert facts["ensemble"]["members"] == 6 and ensemble["accuracy"] > 0.8
    assert ensemble["nll"] <= max(m["test"]["nll"] for m in members)  # averaging never does worse than the worst
    assert len(facts["summary"]["accuracy"]["values"]) == 6
    report = (root / "reports" / "final_report.md").read_text()
    assert "Cross-validation: 3 folds (stratified)" in report and "Ensemble of the 6 models" in report
    assert "| fold 2, seed 43 |" in report
    runs = sorted(p.name for p in next((root / "runs").glob("finalization-*")).iterdir() if p.is_dir())
    assert runs[:6] == [f"fold_{f}_seed_{s}" for f in range(3) for s in (42, 43)]
