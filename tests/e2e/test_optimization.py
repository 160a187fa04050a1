"""Phase 4 on real digits runs: an Optuna study of real trials, a fair comparison over seeds, and a
study that continues after a restart."""

import json

import pytest

from mlflow_core.config import load_config
from mlflow_core.workflow.scaffold import set_yaml_value

pytest.importorskip("optuna")


def _configure(project, settings):
    """Set section.key values in the project's training_config.yaml, comments kept."""
    config = project / "training_config.yaml"
    text = config.read_text()
    for key, value in settings:
        text = set_yaml_value(text, key, value)
    config.write_text(text)


@pytest.fixture
def ready(wf, project_copy):
    """The session's quickstart project, decided for optimization, with a small sweep."""
    _configure(project_copy, [("optimization.n_trials", "3"), ("optimization.trial_epochs", "2"),
                          ("optimization.seeds", "2"), ("training.epochs", "3")])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0
    assert wf("decide", "optimize", "--reason", "sweep the learning rate", cwd=project_copy).code == 0
    return project_copy


def test_optimization_runs_a_study_compares_over_seeds_and_continues(wf, ready):
    r = wf("phase", "optimization", cwd=ready)
    assert r.code in (0, 1), r.err + r.out[-2000:]  # 1 when the gain is within the seed noise
    evidence = json.loads((ready / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    study = evidence["study"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 3 and study["storage"].endswith("optuna.db")
    assert (ready / ".wf" / "optuna.db").is_file()
    comparison = evidence["comparison"]
    assert len(comparison["baseline"]) == len(comparison["optimized"]) == 2
    assert comparison["p_value"] is not None and isinstance(comparison["significant"], bool)
    assert (r.code == 0) == comparison["significant"]
    for trial in evidence["trials"]:  # every trial is a real run with its own files
        assert (ready / trial["run_dir"] / "logs" / "metrics.json").is_file()
    optimized = load_config(ready / "configs" / "optimized_config.yaml")
    best = evidence["best"]["params"]
    assert optimized.training.learning_rate == pytest.approx(best["training.learning_rate"], rel=1e-5)
    report = (ready / "reports" / "optimization_results.md").read_text()
    assert "## Against the baseline" in report and "figures/optimization_history.png" in report
    assert "LR range test" in report
    gate = json.loads(wf("gate", "check", "optimization", "--json", cwd=ready).out)
    checked = {i["id"]: i["checked"] for i in gate["items"]}
    assert checked["trials_completed"] and checked["optimized_config_written"] and checked["report_generated"]
    assert checked["improvement_significant"] == comparison["significant"]

    # a restarted sweep continues its study: one more trial, numbered after the first three
    config = ready / "training_config.yaml"
    config.write_text(set_yaml_value(config.read_text(), "optimization.n_trials", "4"))
    wf("phase", "optimization", cwd=ready)
    evidence = json.loads((ready / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    assert [t["number"] for t in evidence["trials"]] == [0, 1, 2, 3]
    assert evidence["study"]["name"] == study["name"]
    first = [t["params"] for t in evidence["trials"][:3]]
    assert evidence["trials"][3]["params"] not in first  # the restarted sampler does not repeat itself


def test_lr_find_suggests_and_draws(wf, project_copy):
    r = wf("lr-find", "--steps", "40", "--json", cwd=project_copy)
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["suggested_lr"] > 0 and out["configured_lr"] == 1e-3
    assert (project_copy / out["figure"]).is_file()
    assert wf("lr-find", "--start-lr", "1", "--end-lr", "0.1", cwd=project_copy).code == 2


def test_a_search_space_key_that_is_not_a_setting_is_refused(wf, tmp_path):
    assert wf("init", "p", cwd=tmp_path).code == 0
    config = tmp_path / "p" / "training_config.yaml"
    config.write_text(config.read_text().replace("training.weight_decay: {type", "training.wd: {type"))
    r = wf("config", "validate", cwd=tmp_path / "p")
    assert r.code == 2 and "'training.wd' is not a config setting" in r.err


def test_the_whole_path_setup_baseline_optimization_finalization(wf, ready):
    """Setup and baseline come from the session's quickstart; then Phase 4 and Phase 5 for real."""
    _configure(ready, [("optimization.n_trials", "2"), ("optimization.lr_find", "false"),
                          ("finalization.seeds", "2")])
    assert wf("phase", "finalization", cwd=ready).code == 3  # decided optimize: finalization is not next
    assert wf("phase", "optimization", cwd=ready).code in (0, 1)
    assert wf("gate", "check", "optimization", cwd=ready).code == 1  # the review is still open ...
    r = wf("phase", "finalization", cwd=ready)  # ... but the sweep has a result: finalization may start
    assert r.code == 0, r.err + r.out[-3000:]
    facts = json.loads((ready / ".wf" / "evidence" / "finalization.json").read_text())["facts"]
    assert facts["test_split"]["samples"] == 179 and not facts["test_split"]["evaluated_before_by"]
    accuracy = facts["summary"]["accuracy"]
    assert len(accuracy["values"]) == 2 and accuracy["mean"] > 0.9
    first = facts["seeds"][0]["test"]
    assert len(first["per_class"]) == 10 and "top5_accuracy" in first and sum(map(sum, first["confusion"])) == 179
    exports = {e["kind"]: e for e in facts["exports"]}
    assert exports["state_dict"]["verified"] and exports["state_dict"]["max_abs_diff"] == 0.0
    assert exports["torch_export"]["verified"], exports["torch_export"]["detail"]
    import torch
    state = torch.load(ready / "export" / "model_state_dict.pt", weights_only=True)
    assert state["num_classes"] == 10
    manifest = json.loads((ready / "export" / "manifest.json").read_text())
    assert [p["phase"] for p in manifest["phases"]][:2] == ["setup", "baseline"] and "optimization" in [
        p["phase"] for p in manifest["phases"]]
    card = (ready / "reports" / "final_report.md").read_text()
    assert "## Results on the held-out test split" in card and "## Limitations" in card
    assert "figures/final_confusion_matrix.png" in card
    gate = json.loads(wf("gate", "check", "finalization", "--json", cwd=ready).out)
    checked = {i["id"]: i["checked"] for i in gate["items"]}
    assert checked == {"test_evaluated_once": True, "export_verified": True, "report_generated": True,
                       "chosen_config_confirmed": False, "model_card_reviewed": False}
    # a second finalization sees that the test split was used before, and says so
    assert wf("phase", "finalization", cwd=ready).code == 1
    gate = json.loads(wf("gate", "check", "finalization", "--json", cwd=ready).out)
    item = next(i for i in gate["items"] if i["id"] == "test_evaluated_once")
    assert not item["checked"] and "already evaluated" in item["evidence"]


def test_finalization_without_a_test_split_says_how_to_add_one(wf, tmp_path):
    assert wf("init", "p", cwd=tmp_path).code == 0
    p = tmp_path / "p"
    config = p / "training_config.yaml"
    config.write_text(set_yaml_value(config.read_text(), "data.test_fraction", "0.0"))
    r = wf("phase", "finalization", "--override-gate", "checking the data first", cwd=p)
    assert r.code == 2 and "needs a held-out test split" in r.err and "data.test_fraction" in r.err
    assert not (p / "export").exists()


def test_finalization_whose_runs_all_fail_reports_it(wf, project_copy):
    """A final run that ends on NaN: nothing is evaluated or exported, the model card says so, exit 1."""
    _configure(project_copy, [("training.optimizer", "sgd"), ("training.learning_rate", "1.0e4"),
                          ("model.batch_norm", "false")])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0
    assert wf("decide", "finalize", cwd=project_copy).code == 0
    r = wf("phase", "finalization", cwd=project_copy)
    assert r.code == 1, r.err
    card = (project_copy / "reports" / "final_report.md").read_text()
    assert "No final run completed" in card and "No export could be verified" in card
    assert not (project_copy / "export" / "model.pt2").exists()


def test_a_storage_that_cannot_be_opened_is_bad_input(wf, ready):
    _configure(ready, [("optimization.storage", '"nosuchdb://host/study"')])
    r = wf("phase", "optimization", cwd=ready)
    assert r.code == 2 and "optimization.storage 'nosuchdb://host/study': cannot open the Optuna study" in r.err
    assert "Traceback" not in r.err + r.out and not (ready / "configs" / "optimized_config.yaml").exists()
