"""`wf report summary` and `wf report comment`: the project in one markdown digest for review, and
that digest as one pull-request comment, posted through GitHub's CLI (a stand-in for `gh` here, as
the SLURM tests stand in for `srun`: the real one needs a network and an account)."""

import json
import os
import stat
import sys

GH = """#!{python}
import json, os, sys
state = os.environ["GH_STANDIN_STATE"]
calls = json.load(open(state)) if os.path.exists(state) else []
args = sys.argv[1:]
body = sys.stdin.read() if "--input" in args else None
calls.append({{"args": args, "body": body}})
json.dump(calls, open(state, "w"))
if args[:2] == ["pr", "view"]:
    if os.environ.get("GH_STANDIN_NO_PR"):
        print("no pull requests found for branch \\"topic\\"", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({{"number": 12, "url": "https://github.com/lab/sentinel/pull/12", "headRefOid": "abc123"}}))
elif "--jq" in args:
    print(os.environ.get("GH_STANDIN_EXISTING", ""))
"""


def test_the_summary_digests_the_project_with_its_figures_and_links(wf, project_copy, tmp_path):
    r = wf("report", "summary", cwd=project_copy)
    assert r.code == 0, r.err
    text = r.out
    assert text.startswith("<!-- wf report summary -->\n## wf · ")
    assert "**Path:** ✅ Setup (8/8) → " in text and "Baseline" in text
    assert "| baseline | best val_accuracy **" in text and " %** at epoch " in text  # accuracies in %
    assert "[`reports/baseline_results.md`](reports/baseline_results.md)" in text
    assert "**Figures:** [`reports/figures/" in text
    assert len(text.encode()) < 64_000
    out = wf("report", "summary", "--output", str(tmp_path / "summary.md"), cwd=project_copy)
    assert out.code == 0 and (tmp_path / "summary.md").read_text() == text


def test_the_summary_names_each_decision_after_its_phase_and_a_run_that_stopped(wf, project_copy):
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0
    assert wf("decide", "optimize", "--reason", "tune it", cwd=project_copy).code == 0
    path = project_copy / ".wf" / "state.json"
    state = json.loads(path.read_text())
    baseline = next(r for r in state["runs"] if r["phase"] == "baseline")
    # a later baseline run stopped before it recorded an outcome (its process gone, on another machine)
    state["runs"].append({**baseline, "run_id": "baseline-20990101-000000-abcd", "status": "running",
                          "finished_at": None, "passed": None, "pid": 1, "host": "elsewhere"})
    path.write_text(json.dumps(state))
    text = wf("report", "summary", cwd=project_copy).out
    assert "**Decision after baseline:** optimize → optimization — tune it" in text
    assert "**Decision after the baseline" not in text
    row = next(line for line in text.splitlines() if line.startswith("| baseline |"))
    assert "⏸ run `baseline-20990101-000000-abcd` interrupted; continue with `wf phase baseline --resume`" in row
    assert "the run before it: best val_accuracy" in row


def _standin(tmp_path, monkeypatch, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text(GH.format(python=sys.executable))
    gh.chmod(gh.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GH_STANDIN_STATE", str(tmp_path / "calls.json"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path / "calls.json"


def test_the_comment_is_posted_once_then_updated_in_place(wf, project_copy, tmp_path, monkeypatch):
    calls = _standin(tmp_path, monkeypatch)
    r = wf("report", "comment", cwd=project_copy)
    assert r.code == 0, r.err
    assert "posted the summary on https://github.com/lab/sentinel/pull/12" in r.out
    posted = json.loads(calls.read_text())[-1]
    assert posted["args"][:3] == ["api", "-X", "POST"] and posted["args"][3].endswith("/issues/12/comments")
    body = json.loads(posted["body"])["body"]
    # links point at the pull request's head commit: a comment has no relative paths
    assert "](https://github.com/lab/sentinel/blob/abc123/reports/baseline_results.md)" in body

    monkeypatch.setenv("GH_STANDIN_EXISTING", "77")  # the comment wf posted before
    r = wf("report", "comment", cwd=project_copy)
    assert r.code == 0 and "updated the summary comment on https://github.com/lab/sentinel/pull/12" in r.out
    patched = json.loads(calls.read_text())[-1]
    assert patched["args"][:4] == ["api", "-X", "PATCH", "repos/{owner}/{repo}/issues/comments/77"]


def test_without_gh_or_a_pull_request_the_comment_says_what_to_do(wf, project_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gh anywhere
    r = wf("report", "comment", cwd=project_copy)
    assert r.code == 2 and "posts through GitHub's CLI, `gh`, which is not installed here" in r.err
    assert "wf report summary" in r.err
    monkeypatch.undo()
    _standin(tmp_path, monkeypatch, GH_STANDIN_NO_PR="1")
    r = wf("report", "comment", cwd=project_copy)
    assert r.code == 2 and '`gh pr view` failed: no pull requests found for branch "topic"' in r.err
    assert "gh pr create" in r.err and "Traceback" not in r.err


def test_the_diagnostics_row_says_what_the_diagnosis_concluded():
    from mlflow_core.reports.summary import _figures
    from mlflow_core.workflow.facts import DiagnosticsFacts

    def facts(confidence, passed=False):
        finding = {"diagnostic": "overfitting", "cause": "validation_at_chance", "confidence": confidence,
                   "evidence": {}, "fix": "compare the splits"}
        return DiagnosticsFacts.model_validate({
            "diagnosed_run": "baseline-1", "verified_fix": None, "suggested_config": None,
            "diagnosed_run_passed": passed,
            "diagnosis": {"diagnostic": "auto", "run": "baseline-1", "findings": [finding] if confidence else [],
                          "probes": {}, "trials": [], "suggested_config": None, "report": None}})

    assert _figures(facts(0.8)) == "cause found: **validation_at_chance** (overfitting, confidence 0.80)"
    assert _figures(facts(0.4)) == "no cause stands out; likeliest: validation_at_chance (0.40)"
    assert _figures(facts(None, passed=True)).startswith("nothing to fix: run `baseline-1` met its criteria")
