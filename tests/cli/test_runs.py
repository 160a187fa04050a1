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
