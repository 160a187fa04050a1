"""Phase 4 on real digits runs: an Optuna study of real trials, a fair comparison over seeds, and a
study that continues after a restart."""

import json
import re

import pytest

from mlflow_core.config import load_config
from mlflow_core.workflow.scaffold import set_yaml_value
from tests.helpers import configure
from tests.reference_tools import assert_reports_render_on_github

pytest.importorskip("optuna")


OVERRIDE = ("--override-gate", "tests: a 3-epoch comparison instead of the baseline's 15")


@pytest.fixture
def ready(wf, project_copy):
    """The session's quickstart project, decided for optimization, with a small sweep. Its comparison
    runs train 3 epochs where the baseline trained 15: the gates see a config the baseline never
    ran, so starting the sweep takes an override (OVERRIDE), recorded as a user's would be."""
    configure(project_copy, [("optimization.n_trials", "3"), ("optimization.trial_epochs", "2"),
                          ("optimization.seeds", "2"), ("training.epochs", "3")])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0
    assert wf("decide", "optimize", "--reason", "sweep the learning rate", cwd=project_copy).code == 0
    return project_copy


def test_the_comparison_reuses_the_recorded_baseline_run_it_would_train_again(wf, tmp_path):
    """The comparison's baseline run of the baseline's own seed is the recorded baseline run when
    config, seed, data and code match: it is not trained again, and the plan says so first."""
    assert wf("init", "p", cwd=tmp_path).code == 0
    project = tmp_path / "p"
    configure(project, [("training.epochs", "3"), ("optimization.n_trials", "1"), ("optimization.trial_epochs", "1"),
                        ("optimization.seeds", "2"), ("optimization.lr_find", "false")])
    assert wf("phase", "setup", cwd=project).code == 0
    assert wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=project).code == 0
    assert wf("phase", "baseline", cwd=project).code in (0, 1)
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project).code == 0
    assert wf("decide", "optimize", "--reason", "tests", cwd=project).code == 0
    r = wf("phase", "optimization", cwd=project)
    assert r.code == 0, r.err + r.out[-2000:]
    said = " ".join(r.out.split())
    assert ("the baseline and the optimized config × 3 epochs, 3 runs to train (the recorded baseline run stands "
            "for seed 42); at most 10 epochs, about ") in said and "at the baseline's " in said
    baseline = json.loads((project / ".wf" / "evidence" / "baseline.json").read_text())
    facts = json.loads((project / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    runs = {(run["label"], run["seed"]): run for run in facts["comparison"]["runs"]}
    assert runs[("baseline", 42)]["reused"] == baseline["run_id"]
    assert runs[("baseline", 42)]["run_dir"] == baseline["facts"]["run_dir"]
    assert facts["comparison"]["baseline"][0] == baseline["facts"]["best"]["value"]
    assert "reused" not in runs[("baseline", 43)] and "reused" not in runs[("optimized", 42)]
    assert not list(project.glob("runs/optimization-*/comparison/baseline_seed42"))
    assert f"the recorded baseline run {baseline['run_id']}" in said
    # wf verify recomputes the reused run as the baseline run it is, and the optimized config holds the
    # best trial's values exactly (not rounded to 6 digits)
    verified = wf("verify", "optimization", cwd=project)
    assert verified.code == 0, verified.out[-3000:] + verified.err
    assert "reused run: " + baseline["run_id"] in " ".join(verified.out.split())
    assert "optimization: 4 comparison runs and the best trial; for each run" in " ".join(verified.out.split())


def test_a_trial_that_trained_its_whole_budget_is_never_pruned(wf, ready):
    """One-epoch trials under the median pruner: the only epoch is the budget's last, so a trial that
    reached it completed; pruning it then would save nothing and misname it."""
    configure(ready, [("optimization.n_trials", "4"), ("optimization.trial_epochs", "1"),
                      ("optimization.pruner_startup_trials", "1"), ("optimization.lr_find", "false"),
                      ("training.epochs", "1")])
    r = wf("phase", "optimization", *OVERRIDE, cwd=ready)
    assert r.code == 0, r.err + r.out[-2000:]
    counts = json.loads((ready / ".wf" / "evidence" / "optimization.json").read_text())["facts"]["study"]["counts"]
    assert counts["COMPLETE"] == 4 and counts["PRUNED"] == 0
    assert "pruned after epoch 1" not in r.out


def test_optimization_runs_a_study_compares_over_seeds_and_continues(wf, ready):
    r = wf("phase", "optimization", *OVERRIDE, cwd=ready)
    assert r.code == 0, r.err + r.out[-2000:]  # an outcome either way: improved, or no significant improvement
    evidence = json.loads((ready / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    study = evidence["study"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 3 and study["storage"].endswith("optuna.db")
    assert (ready / ".wf" / "optuna.db").is_file()
    comparison = evidence["comparison"]
    assert len(comparison["baseline"]) == len(comparison["optimized"]) == 2
    assert comparison["p_value"] is not None and isinstance(comparison["significant"], bool)
    for trial in evidence["trials"]:  # every trial is a real run with its own files
        assert (ready / trial["run_dir"] / "logs" / "metrics.json").is_file()
    optimized = load_config(ready / "configs" / "optimized_config.yaml")
    best = evidence["best"]["params"]
    assert optimized.training.learning_rate == pytest.approx(best["training.learning_rate"], rel=1e-5)
    report = (ready / "reports" / "optimization_results.md").read_text()
    assert "## Against the baseline" in report and "figures/optimization_history.png" in report
    assert "LR range test" in report
    # 3 trials of 2 epochs: pruning waits for 2 completed trials and judges from epoch 1 (half of 2)
    assert study["pruning"]["startup_trials"] == 2 and study["pruning"]["warmup_epochs"] == 1
    assert ("Pruning: a trial is pruned from epoch 1 on, once 2 trials have completed, when its best val_accuracy "
            "so far is worse than their median at the same epoch by more than the sampling noise of") in report
    assert "Pruning: a trial is pruned from epoch 1 on" in r.out  # said before the first trial
    # the plan, said before anything trains; the comparison's 3 epochs are not the baseline's 15: no reuse
    plan = " ".join(r.out.split())
    assert ("Plan: 3 trials × 2 epochs (fewer where pruned), then the comparison over seeds 42, 43: the baseline "
            "and the optimized config × 3 epochs, 4 runs to train; at most 18 epochs, about ") in plan
    assert not any(run.get("reused") for run in comparison["runs"])
    assert re.search(r"\| complete \| \d{1,3}\.\d % \|", report)  # accuracies in %, as in every report
    gate = json.loads(wf("gate", "check", "optimization", "--json", cwd=ready).out)
    checked = {i["id"]: i["checked"] for i in gate["items"]}
    assert checked["trials_completed"] and checked["optimized_config_written"] and checked["report_generated"]
    assert checked["improvement_judged"]  # either outcome is one; the item's evidence says which
    judged = next(i for i in gate["items"] if i["id"] == "improvement_judged")["evidence"]
    assert judged.startswith(comparison["verdict"])
    assert ("copy configs/optimized_config.yaml" if comparison["significant"] else "the baseline's config stays") in judged

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
    configure(ready, [("optimization.n_trials", "2"), ("optimization.lr_find", "false"),
                      ("finalization.seeds", "2"), ("finalization.export", "[state_dict, torch_export, onnx]")])
    assert wf("phase", "finalization", cwd=ready).code == 3  # decided optimize: finalization is not next
    assert wf("phase", "optimization", *OVERRIDE, cwd=ready).code in (0, 1)
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
    assert exports["onnx"]["verified"], exports["onnx"]["detail"]  # the dev install brings onnxruntime
    import torch
    state = torch.load(ready / "export" / "model_state_dict.pt", weights_only=True)
    assert state["num_classes"] == 10
    manifest = json.loads((ready / "export" / "manifest.json").read_text())
    assert "export/model.onnx" in manifest["files"]
    assert [p["phase"] for p in manifest["phases"]][:2] == ["setup", "baseline"] and "optimization" in [
        p["phase"] for p in manifest["phases"]]
    card = (ready / "reports" / "final_report.md").read_text()
    assert "## Results on the held-out test split" in card and "## Limitations" in card
    assert "figures/final_confusion_matrix.png" in card
    assert {"optimization_results.md", "final_report.md"} <= set(assert_reports_render_on_github(ready))
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
    configure(project_copy, [("training.optimizer", "sgd"), ("training.learning_rate", "1.0e4"),
                          ("model.batch_norm", "false")])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0
    assert wf("decide", "finalize", cwd=project_copy).code == 0
    # the baseline never trained this config: finalizing it takes an override on the record
    assert wf("phase", "finalization", cwd=project_copy).code == 3
    r = wf("phase", "finalization", "--override-gate", "a diverging config, on purpose", cwd=project_copy)
    assert r.code == 1, r.err
    card = (project_copy / "reports" / "final_report.md").read_text()
    assert "No final run completed" in card and "No export could be verified" in card
    assert not (project_copy / "export" / "model.pt2").exists()


def test_a_storage_that_cannot_be_opened_is_bad_input(wf, ready):
    configure(ready, [("optimization.storage", '"nosuchdb://host/study"')])
    r = wf("phase", "optimization", *OVERRIDE, cwd=ready)
    assert r.code == 2 and "optimization.storage 'nosuchdb://host/study': cannot open the Optuna study" in r.err
    assert "Traceback" not in r.err + r.out and not (ready / "configs" / "optimized_config.yaml").exists()


def _signal_when(path_glob: str, root, rows: int, signum=None):
    """A thread that sends this process SIGTERM once a file matching `path_glob` under `root` has
    more than `rows` lines: a real signal, at a moment inside the run."""
    import os
    import signal
    import threading
    import time

    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            hits = list(root.glob(path_glob))
            if hits and len(hits[0].read_text().splitlines()) > rows:
                os.kill(os.getpid(), signum or signal.SIGTERM)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _outcome(project):
    facts = json.loads((project / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    drawn = [(t["params"], t["value"], t["state"]) for t in facts["trials"] if t["status"] != "interrupted"]
    return drawn, facts["comparison"]["baseline"], facts["comparison"]["optimized"], facts["best"]["value"]


def test_an_interrupted_sweep_resumes_to_the_sweep_that_would_have_happened(wf, ready, tmp_path):
    """SIGTERM inside trial 1, and again inside a comparison run: each time exit 143, and
    `--resume` continues the same run. Every trial's values and result, the comparison runs and the
    best value equal an uninterrupted sweep's on a copy of the same project."""
    import shutil

    other = tmp_path / "uninterrupted"
    shutil.copytree(ready, other)
    assert wf("phase", "optimization", *OVERRIDE, cwd=other).code in (0, 1)

    _signal_when("runs/optimization-*/trials/trial_001/logs/steps.csv", ready, 30)
    first = wf("phase", "optimization", *OVERRIDE, cwd=ready)
    assert first.code == 143, first.err
    assert "wf phase optimization --resume" in first.err and "trial_001" in first.err
    # the partial results can be reported: what each trial that ran holds so far, and how to go on
    partial = wf("report", "optimization", cwd=ready)
    said = " ".join(partial.err.split())
    assert partial.code == 2 and "stopped before its outcome (interrupted); so far: trials/trial_000: 2 epochs" in said
    assert "continue it with `wf phase optimization --resume`" in said and "Traceback" not in partial.err
    # a resumed sweep continues the config it started with: a changed budget is refused, named
    config = ready / "training_config.yaml"
    started = config.read_text()
    configure(ready, [("optimization.n_trials", "2")])
    changed = wf("phase", "optimization", "--resume", cwd=ready)
    assert changed.code == 2 and "optimization.n_trials 3 → 2" in changed.err
    assert "continues the config it started with" in changed.err and "Traceback" not in changed.err
    config.write_text(started)
    watcher = _signal_when("runs/optimization-*/comparison/optimized_seed43/logs/steps.csv", ready, 20)
    second = wf("phase", "optimization", "--resume", cwd=ready)
    assert second.code == 143, second.err
    watcher.join(timeout=1)
    third = wf("phase", "optimization", "--resume", cwd=ready)
    assert third.code in (0, 1), third.err
    state = json.loads((ready / ".wf" / "state.json").read_text())
    runs = [r for r in state["runs"] if r["phase"] == "optimization"]
    assert len(runs) == 1 and runs[0]["status"] in ("completed", "failed_criteria")
    assert _outcome(ready) == _outcome(other)
    trial_dirs = sorted(p.name for p in (ready / runs[0]["dir"] / "trials").iterdir())
    assert trial_dirs == ["trial_000", "trial_001", "trial_003"]  # trial 2 continued trial_001's directory


def test_trials_left_running_by_a_killed_process_are_enqueued_again(tmp_path):
    """kill -9 leaves a trial RUNNING in the study. The next run ends this project's such trials
    whose process is gone as failed and enqueues each again with its values and directory; a live
    worker's trial, and another machine's in a shared study, are left alone."""
    import socket
    import subprocess

    import optuna

    from mlflow_core.runners import RunContext
    from mlflow_core.runners.study import draw_index
    from mlflow_core.runners.study import requeue_abandoned_trials as _requeue_abandoned_trials
    from mlflow_core.runners.trial_slots import owner_tag
    from mlflow_core.workflow.project import Project

    project = Project(tmp_path)
    ctx = RunContext(project, None, "", "optimization-x", tmp_path / "runs" / "optimization-x")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has ended
    study = optuna.create_study()
    killed, live, theirs = study.ask(), study.ask(), study.ask()
    for trial, owner in ((killed, f"{socket.gethostname()}:{tmp_path.resolve()}:{gone.pid}"),
                         (live, owner_tag(tmp_path)), (theirs, "elsewhere:/p:123")):
        trial.suggest_float("training.learning_rate", 1e-4, 1e-1, log=True)
        trial.set_user_attr("owner", owner)
        trial.set_user_attr("run_dir", f"runs/optimization-x/trials/trial_{trial.number:03d}")
    _requeue_abandoned_trials(optuna, study, ctx)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "RUNNING", 2: "RUNNING", 3: "WAITING"}
    waiting = study.trials[3]
    assert waiting.system_attrs["fixed_params"] == study.trials[0].params
    assert waiting.user_attrs["continues"] == "runs/optimization-x/trials/trial_000"
    assert draw_index(study, 3) == 2  # the killed trial is no draw of its own: its continuation is


def test_an_interrupted_finalization_resumes_without_touching_the_test_split_twice(wf, project_copy, tmp_path):
    """SIGTERM inside the second seed's final run: exit 143, nothing evaluated yet. `--resume`
    reuses the finished first seed, continues the second from its checkpoint, evaluates the test
    split once, and gets the results of an uninterrupted finalization."""
    import shutil

    configure(project_copy, [("finalization.seeds", "2"), ("finalization.epochs", "3")])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0
    assert wf("decide", "finalize", cwd=project_copy).code == 0
    other = tmp_path / "uninterrupted"
    shutil.copytree(project_copy, other)
    done = wf("phase", "finalization", cwd=other)
    assert done.code == 0
    assert re.search(r"Plan: 2 models \(seeds 42, 43\) × 3 epochs, each evaluated once on the test split \(\d+ "
                     r"samples\), then the export checked; 6 epochs, about \d+ s at the baseline's [\d.]+ s per epoch",
                     " ".join(done.out.split()))

    _signal_when("runs/finalization-*/seed_43/logs/steps.csv", project_copy, 60)
    stopped = wf("phase", "finalization", cwd=project_copy)
    assert stopped.code == 143, stopped.err
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    assert "test_evaluated" not in [e["event"] for e in state["history"]]
    resumed = wf("phase", "finalization", "--resume", cwd=project_copy)
    assert resumed.code == 0, resumed.err
    assert "finished before the interruption; reused" in resumed.out + resumed.err
    facts = [json.loads((p / ".wf" / "evidence" / "finalization.json").read_text())["facts"]
             for p in (project_copy, other)]
    assert [s["test"] for s in facts[0]["seeds"]] == [s["test"] for s in facts[1]["seeds"]]
    assert facts[0]["test_split"]["evaluated_before_by"] == []
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    assert [e["event"] for e in state["history"]].count("test_evaluated") == 1


def test_ctrl_c_in_the_lr_range_test_names_the_command_that_continues(wf, ready, monkeypatch):
    """Ctrl-C lands outside a training run's own handler (here the LR range test): exit 130, the run
    recorded as interrupted, and the command that continues it."""
    import mlflow_core.runners.optimization as optimization

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(optimization, "lr_range_test", interrupted)
    r = wf("phase", "optimization", *OVERRIDE, cwd=ready)
    assert r.code == 130 and "optimization interrupted" in r.err
    assert "Continue with `wf phase optimization --resume`." in r.err
    run = json.loads((ready / ".wf" / "state.json").read_text())["runs"][-1]
    assert run["phase"] == "optimization" and run["status"] == "interrupted"
