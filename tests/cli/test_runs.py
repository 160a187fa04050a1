"""`wf runs`: the project's runs from its record, and what changed between two training runs."""

import json

from tests.helpers import configure


def test_runs_lists_newest_first_and_diff_names_what_changed(wf, project_copy):
    configure(project_copy, [("training.epochs", "2"), ("training.learning_rate", "0.003")])
    assert wf("phase", "baseline", "--override-gate", "comparing configs", cwd=project_copy).code in (0, 1)
    rows = json.loads(wf("runs", "--json", cwd=project_copy).out)
    assert [r["phase"] for r in rows] == ["baseline", "baseline", "setup"]
    newest, first = rows[0], rows[1]
    assert newest["epochs"] == 2 and first["best"]["metric"] == "val_accuracy" and first["passed"] is True
    table = wf("runs", "--phase", "baseline", "--last", "1", cwd=project_copy).out
    assert newest["run_id"] in table and first["run_id"] not in table

    diff = json.loads(wf("runs", "diff", first["run_id"], newest["run_id"][:-2], "--json", cwd=project_copy).out)
    assert {c["key"]: (c["a"], c["b"]) for c in diff["changed"]} == {
        "training.epochs": (15, 2), "training.learning_rate": (0.001, 0.003)}
    assert diff["best"][first["run_id"]] == first["best"]
    same = wf("runs", "diff", first["run_id"], first["run_id"], cwd=project_copy)
    assert same.code == 0 and "the same config" in same.out
    ambiguous = wf("runs", "diff", "baseline", newest["run_id"], cwd=project_copy)
    assert ambiguous.code == 2 and "'baseline' matches 2 runs" in ambiguous.err


def test_runs_refuses_what_it_cannot_answer(wf, project_copy):
    setup_run = json.loads(wf("runs", "--json", "--phase", "setup", cwd=project_copy).out)[0]["run_id"]
    no_config = wf("runs", "diff", setup_run, "baseline", cwd=project_copy)
    assert no_config.code == 2 and "recorded no training config of its own" in no_config.err
    unknown = wf("runs", "diff", "nope", "baseline", cwd=project_copy)
    assert unknown.code == 2 and "no run 'nope'" in unknown.err and "`wf runs` lists the run ids" in unknown.err
    bad_phase = wf("runs", "--phase", "tuning", cwd=project_copy)
    assert bad_phase.code == 2 and "not a phase" in bad_phase.err
    assert "No optimization runs yet" in wf("runs", "--phase", "optimization", cwd=project_copy).out


def test_runs_and_diff_work_with_every_kind_of_run(wf, project_copy):
    """Runs of every phase and outcome, as wf records them (an optimization's best is a trial's
    objective, a diagnosis has none, an interrupted or crashed run has no result): listing and
    comparing them never fails with a traceback."""
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import RunRecord, load_state, save_state

    project = Project(project_copy)
    state = load_state(project)
    baseline = next(r for r in state.runs if r.phase == "baseline")
    extra = [
        RunRecord(run_id="optimization-1", phase="optimization", status="completed", started_at="2026-01-01T00:00:00",
                  finished_at="2026-01-01T00:10:00", dir="runs/optimization-1", passed=False,
                  summary={"best": {"trial": 3, "value": 0.99, "params": {"training.learning_rate": 0.003}}}),
        RunRecord(run_id="diagnostics-1", phase="diagnostics", status="completed", started_at="2026-01-01T00:11:00",
                  finished_at="2026-01-01T00:12:00", dir="runs/diagnostics-1", passed=True, summary={}),
        RunRecord(run_id="finalization-1", phase="finalization", status="completed",
                  started_at="2026-01-01T00:13:00", finished_at="2026-01-01T00:20:00", dir="runs/finalization-1",
                  passed=True, summary={"best": None}),
        RunRecord(run_id="baseline-interrupted", phase="baseline", status="interrupted",
                  started_at="2026-01-01T00:21:00", finished_at="2026-01-01T00:22:00", dir=baseline.dir,
                  summary={"resume": {"step": 40}}),
        RunRecord(run_id="baseline-crashed", phase="baseline", status="crashed", started_at="2026-01-01T00:23:00",
                  finished_at="2026-01-01T00:23:05", dir="runs/baseline-crashed", passed=False,
                  summary={"error": "RuntimeError: boom"}),
        RunRecord(run_id="setup-running", phase="setup", status="running", started_at="2026-01-01T00:24:00",
                  dir="runs/setup-running"),
    ]
    state.runs.extend(extra)
    save_state(project, state)
    (project_copy / "runs" / "optimization-1" / "trials" / "trial-0003" / "logs").mkdir(parents=True)
    r = wf("runs", cwd=project_copy)
    assert r.code == 0 and "objective 0.99 (trial 3)" in r.out and "crashed" in r.out, r.err
    rows = json.loads(wf("runs", "--json", cwd=project_copy).out)
    assert {row["phase"] for row in rows} == {"setup", "baseline", "optimization", "diagnostics", "finalization"}
    for other in extra:
        d = wf("runs", "diff", baseline.run_id, other.run_id, cwd=project_copy)
        assert d.code in (0, 2) and "Traceback" not in d.err, d.err
        if d.code == 2:
            assert other.run_id in d.err or "recorded no training config" in d.err


def test_output_to_a_file_or_pipe_is_not_wrapped_at_80_columns(monkeypatch):
    """A SLURM log or CI has no terminal width: rich would wrap every table cell and progress line
    at 80 columns. COLUMNS, where set, still decides."""
    from mlflow_core.cli import output

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(output.console, "_width", None)
    assert not output.console.is_terminal  # pytest captures stdout
    output.widen_when_not_a_terminal()
    assert output.console.width == output.UNWRAPPED_WIDTH == 200
    monkeypatch.setattr(output.console, "_width", None)
    monkeypatch.setenv("COLUMNS", "120")
    output.widen_when_not_a_terminal()
    assert output.console.width == 120


def test_diff_across_phases_reaches_the_training_runs_a_phase_run_holds(wf, project_copy):
    """A finalization (or an optimization) trains runs of its own inside its directory: `wf runs
    diff` compares the baseline with one of them, names them when there are several, and says when
    one was interrupted."""
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import RunRecord, load_state, save_state

    project = Project(project_copy)
    state = load_state(project)
    baseline = next(r for r in state.runs if r.phase == "baseline")
    state.runs.append(RunRecord(run_id="finalization-1", phase="finalization", status="interrupted",
                                started_at="2026-01-01T00:13:00", finished_at="2026-01-01T00:20:00",
                                dir="runs/finalization-1", summary={}))
    save_state(project, state)
    record = json.loads((project_copy / baseline.dir / "logs" / "metrics.json").read_text())
    record["config"]["training"]["epochs"] = 30
    record["status"] = "interrupted"
    seed_run = project_copy / "runs" / "finalization-1" / "seed_42" / "logs"
    seed_run.mkdir(parents=True)
    (seed_run / "metrics.json").write_text(json.dumps(record))

    one = wf("runs", "diff", baseline.run_id, "finalization-1", cwd=project_copy)  # the one run it holds
    assert one.code == 0, one.err
    assert "finalization-1/seed_42" in one.out and "training.epochs" in one.out and "(interrupted)" in one.out
    named = json.loads(wf("runs", "diff", baseline.run_id, "finalization-1/seed_42", "--json", cwd=project_copy).out)
    assert named["changed"] == [{"key": "training.epochs", "a": 15, "b": 30}]
    assert named["status"]["finalization-1/seed_42"] == "interrupted"

    (project_copy / "runs" / "finalization-1" / "seed_43" / "logs").mkdir(parents=True)
    (project_copy / "runs" / "finalization-1" / "seed_43" / "logs" / "metrics.json").write_text(json.dumps(record))
    several = wf("runs", "diff", baseline.run_id, "finalization-1", cwd=project_copy)
    assert several.code == 2 and "holds 2 training runs; name one as finalization-1/PATH" in several.err
    assert "finalization-1/seed_42, finalization-1/seed_43" in several.err
    outside = wf("runs", "diff", baseline.run_id, "finalization-1/../../etc", cwd=project_copy)
    assert outside.code == 2 and "not inside the directory of run finalization-1" in outside.err
