"""Gates that judge the truth of their claims: `wf verify` recomputes them from the artifacts, evidence
is bound to its project and history, a chance-level model never passes, and what is on the record
says who put it there. Each attack edits files as a pull-request author could, hashes included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from mlflow_core.workflow.evidence import file_sha256
from tests.helpers import configure, forge_evidence

torch = pytest.importorskip("torch")


def _verify(wf, project, *args):
    r = wf("verify", *args, "--json", cwd=project)
    return r.code, json.loads(r.out) if r.out.strip().startswith("{") else r


def _claims(result, phase):
    return {c["name"]: c for p in result["phases"] if p["phase"] == phase for c in p["claims"]}





def _best_checkpoint(project):
    facts = json.loads((project / ".wf" / "evidence" / "baseline.json").read_text())["facts"]
    return project / facts["checkpoints"]["best"]["path"]


def _nudge_a_weight(path, by=1e-6):
    checkpoint = torch.load(path, weights_only=True)
    name = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
    checkpoint["model"][name].view(-1)[0] += by
    path.unlink()  # hard-linked to last_model.pt and others: change this name only
    torch.save(checkpoint, path)


def _ready(wf, project):
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project).code == 0
    assert wf("decide", "finalize", "--reason", "meets the target", cwd=project).code == 0


# --- an honest project --------------------------------------------------------------------------

def test_verify_all_recomputes_every_claim_of_an_honest_project(wf, project_copy):
    code, result = _verify(wf, project_copy, "--all", "--segments", "2", "--seed", "7")
    assert code == 0 and result["passed"] and result["seed"] == 7, result
    baseline = _claims(result, "baseline")
    assert {"data", "config", "initial weights", "kept training states"} <= set(baseline)
    replays = [c for name, c in baseline.items() if name.endswith("(replay)")]
    assert len(replays) == 2 and all("bit-equal" in c["detail"] for c in replays)
    figures = next(c for name, c in baseline.items() if name.endswith("validation figures"))
    assert "bit-equal" in figures["detail"] and "val_accuracy" in figures["detail"]
    setup = _claims(result, "setup")
    assert setup["reproducibility run"]["status"] == "verified" and setup["data checks"]["status"] == "verified"
    # the same seed chooses the same segments
    _, again = _verify(wf, project_copy, "baseline", "--segments", "2", "--seed", "7")
    assert sorted(n for n in _claims(again, "baseline") if n.endswith("(replay)")) == sorted(
        n for n in baseline if n.endswith("(replay)"))
    text = wf("verify", "baseline", "--seed", "7", cwd=project_copy)
    assert text.code == 0 and "Every claim recomputes (segments chosen with --seed 7)" in text.out
    # it says what it will compute before computing it: the runs, the epochs re-trained, about how long
    plan = " ".join(text.out.split())
    assert "Plan: the data hashed again; baseline: 1 run; for each run its best checkpoint evaluated again and " \
           "1 epoch re-trained from its kept states: 1 epoch, about " in plan, plan
    assert plan.index("Plan:") < plan.index("Every claim recomputes")


# --- attacks that `wf gate check` cannot see, and `wf verify` recomputes ---------------------------

def test_a_checkpoint_tensor_changed_by_1e_6_fails_naming_the_checkpoint_and_the_claim(wf, project_copy):
    best = _best_checkpoint(project_copy)
    _nudge_a_weight(best)
    code, result = _verify(wf, project_copy, "baseline", "--seed", "1")
    failed = [c for c in _claims(result, "baseline").values() if c["status"] == "failed"]
    assert code == 1 and failed and best.name in failed[0]["name"] and "hashes to" in failed[0]["detail"]
    # the same edit with its hash forged into the evidence: the gate is satisfied, the weights are not
    forge_evidence(project_copy, "baseline", lambda f: f["checkpoints"]["best"].update(sha256=file_sha256(best)))
    assert json.loads(wf("gate", "check", "baseline", "--json", cwd=project_copy).out)["drift"] == []
    code, result = _verify(wf, project_copy, "baseline", "--seed", "1")
    failed = [c for c in _claims(result, "baseline").values() if c["status"] == "failed"]
    assert code == 1 and "are not those epoch" in failed[0]["detail"] and best.name in failed[0]["name"]


def test_a_forged_validation_figure_does_not_recompute(wf, project_copy):
    forge_evidence(project_copy, "baseline", lambda f: f["best_validation"].update(val_accuracy=1.0))
    code, result = _verify(wf, project_copy, "baseline", "--seed", "1")
    figures = next(c for n, c in _claims(result, "baseline").items() if n.endswith("validation figures"))
    assert code == 1 and figures["status"] == "failed" and "(recorded 1)" in figures["detail"]
    # the run's own copy of its evidence (.wf/evidence/runs/) still says what the run recorded
    code, result = _verify(wf, project_copy, "--all", "--seed", "1")
    history = _claims(result, "history")["runs and their evidence"]
    assert code == 1 and history["status"] == "failed" and "its evidence file holds" in history["detail"]


def test_a_forged_chance_level_does_not_recompute(wf, project_copy):
    # more validation samples than there are lower the bar that beats_chance sets
    forge_evidence(project_copy, "baseline", lambda f: f["chance"].update(count=100000))
    code, result = _verify(wf, project_copy, "baseline", "--seed", "1")
    chance = _claims(result, "baseline")["chance level"]
    assert code == 1 and chance["status"] == "failed" and "count 359 (recorded 100000)" in chance["detail"]


def test_a_forged_training_history_fails_its_replay(wf, project_copy):
    forged = "0" * 64
    forge_evidence(project_copy, "baseline", lambda f: f["weights"]["4"].update(sha256=forged))
    code, result = _verify(wf, project_copy, "baseline", "--segments", "20", "--seed", "1")
    claims = _claims(result, "baseline")
    assert code == 1 and claims["training epoch 4 (replay)"]["status"] == "failed"
    assert claims["kept training states"]["status"] == "failed" and "5" in claims["kept training states"]["detail"]
    assert claims["training epoch 3 (replay)"]["status"] == "verified"


def test_a_config_changed_after_the_fact_and_forged_into_the_evidence_fails(wf, project_copy):
    configure(project_copy, [("training.learning_rate", "0.002")])

    def forge(facts):
        facts["fingerprints"]["config"]["values"]["training.learning_rate"] = 0.002
    forge_evidence(project_copy, "baseline", forge)
    code, result = _verify(wf, project_copy, "baseline", "--seed", "1")
    config = _claims(result, "baseline")["config"]
    assert code == 1 and config["status"] == "failed" and "training.learning_rate 0.002 → 0.001" in config["detail"]
    # the gates see it too: setup never approved that config, whatever the baseline's evidence says
    gates = json.loads(wf("gate", "check", "--all", "--json", cwd=project_copy).out)["gates"]
    drift = {g["phase"]: " ".join(d["detail"] for d in g["drift"]) for g in gates}
    assert "never approved" in drift["baseline"] and "training.learning_rate" in drift["setup"]


def test_without_kept_states_training_is_unverifiable_and_verify_fails(wf, project_copy):
    shutil.rmtree(_best_checkpoint(project_copy).parent / "replay")
    code, result = _verify(wf, project_copy, "baseline")
    unverifiable = [c for c in _claims(result, "baseline").values() if c["status"] == "unverifiable"]
    assert code == 1 and unverifiable and "not on this machine" in unverifiable[0]["detail"]
    shutil.rmtree(project_copy / "runs")  # a CI checkout: nothing to recompute from, never a pass
    code, result = _verify(wf, project_copy, "--all")
    assert code == 1 and all(c["status"] != "failed" for p in result["phases"] for c in p["claims"])


def test_verify_refuses_bad_arguments(wf, project_copy):
    assert wf("verify", "baseline", "--all", cwd=project_copy).code == 2
    r = wf("verify", "basline", cwd=project_copy)
    assert r.code == 2 and "unknown phase 'basline'" in r.err and "baseline" in r.err
    assert wf("verify", "--segments", "0", cwd=project_copy).code == 2


# --- claims that mean what they say -----------------------------------------------------------------

def test_a_chance_level_baseline_fails_its_gate_and_cannot_be_finalized_without_a_reason(wf, tmp_path):
    assert wf("init", "p", cwd=tmp_path).code == 0
    project = tmp_path / "p"
    configure(project, [("training.learning_rate", "1.0e6"), ("training.epochs", "4")])
    assert wf("phase", "setup", cwd=project).code == 0
    wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=project)
    r = wf("phase", "baseline", cwd=project)
    assert r.code == 1 and "✘ The model learns" in r.out, r.out[-3000:]
    gate = json.loads(wf("gate", "check", "baseline", "--json", cwd=project).out)
    item = next(i for i in gate["items"] if i["id"] == "beats_chance")
    assert not item["checked"] and "not above chance" in item["evidence"] and "majority class" in item["evidence"]
    wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project)
    r = wf("decide", "finalize", cwd=project)
    assert r.code == 2 and "finalizing below the target" in r.err and "--reason" in r.err
    assert wf("decide", "finalize", "--reason", "a teaching demo", cwd=project).code == 0
    state = json.loads((project / ".wf" / "state.json").read_text())
    assert "misses validation.target 0.97" in state["decision"]["shortfall"]
    assert "below target" in wf("report", "summary", cwd=project).out


# --- bound to the project and its history -------------------------------------------------------------

def test_evidence_from_another_project_is_refused_naming_both(wf, project_copy):
    state_path = project_copy / ".wf" / "state.json"
    state = json.loads(state_path.read_text())
    ours = state["project_id"]
    state["project_id"] = "f" * 32  # the state of one project, the evidence of another
    state_path.write_text(json.dumps(state))
    code = wf("gate", "check", "--all", cwd=project_copy).code
    gates = json.loads(wf("gate", "check", "--all", "--json", cwd=project_copy).out)["gates"]
    detail = " ".join(d["detail"] for g in gates for d in g["drift"])
    assert code == 1 and f"recorded by project {ours}" in detail and "f" * 32 in detail


def test_evidence_entered_from_evidence_this_project_does_not_hold_is_refused(wf, project_copy):
    forge_evidence(project_copy, "baseline", edit_record=lambda r: r["entered_from"].update(evidence_sha256="e" * 64))
    gate = json.loads(wf("gate", "check", "baseline", "--json", cwd=project_copy).out)
    assert not gate["passed"] and "which this project does not hold" in gate["drift"][0]["detail"]


def test_rewinding_current_phase_does_not_hide_a_later_gate(wf, project_copy):
    state_path = project_copy / ".wf" / "state.json"
    state = json.loads(state_path.read_text())
    state["current_phase"], state["entered_from"] = "setup", {}
    state_path.write_text(json.dumps(state))
    r = wf("gate", "check", "--all", "--json", cwd=project_copy)
    gates = {g["phase"]: g for g in json.loads(r.out)["gates"]}
    assert r.code == 1 and set(gates) == {"setup", "baseline"} and not gates["baseline"]["passed"]


# --- what a project file asks of a gate -----------------------------------------------------------

def test_a_phase_file_naming_another_phases_checklist_is_bad_input(wf, project_copy):
    phases = project_copy / "phases"
    phases.mkdir(exist_ok=True)
    from mlflow_core.content import packaged_root

    text = (packaged_root() / "phases" / "baseline.yaml").read_text()
    (phases / "baseline.yaml").write_text(text.replace("exit_checklist: post_baseline", "exit_checklist: reproducibility"))
    r = wf("gate", "check", "baseline", cwd=project_copy)
    assert r.code == 2 and "phases/baseline.yaml: exit_checklist: 'reproducibility'" in r.err and "Traceback" not in r.err
    (phases / "baseline.yaml").write_text(text.replace("check: loss_decreased}", "check: config_valid}", 1))
    r = wf("gate", "check", "baseline", cwd=project_copy)
    assert r.code == 2 and "success_criteria: loss_decreased names `config_valid`" in r.err
    (phases / "baseline.yaml").write_text(text)
    checklist = project_copy / "checklists" / "post_baseline.md"
    checklist.write_text(checklist.read_text() + "- [ ] Seeds <!-- id: mine; auto: seeds_fixed -->\n")
    r = wf("gate", "check", "baseline", cwd=project_copy)
    assert r.code == 2 and "checklists/post_baseline.md:" in r.err and "auto: seeds_fixed" in r.err


# --- waivers say who put them on the record ---------------------------------------------------------

def _git(project, *args, name="Maintainer", email="maintainer@example.org"):
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
           "GIT_COMMITTER_EMAIL": email}
    subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True)


def test_a_waiver_written_under_another_name_is_flagged_and_fails_verify(wf, project_copy, monkeypatch):
    _ready(wf, project_copy)
    _git(project_copy, "init", "-q")
    _git(project_copy, "add", "-A")
    _git(project_copy, "commit", "-qm", "baseline")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Maintainer")
    assert wf("checklist", "waive", "post_baseline", "gpu_utilization_documented", "--reason", "CPU only",
              cwd=project_copy).code == 0
    _git(project_copy, "commit", "-qam", "waive", name="Mallory", email="mallory@example.org")
    markdown = wf("gate", "check", "--all", "--markdown", cwd=project_copy).out
    assert "by Maintainer ⚠️ but committed by Mallory <mallory@example.org>" in markdown
    code, result = _verify(wf, project_copy, "baseline", "--seed", "1")
    on_record = _claims(result, "waivers and overrides")
    assert code == 1 and on_record["waiver: post_baseline · gpu_utilization_documented"]["status"] == "failed"
    assert "not the person it names" in wf("report", "summary", cwd=project_copy).out
    # a shallow clone (a CI checkout's default) was cut at the last commit: it cannot say who added the waiver
    _git(project_copy, "commit", "-q", "--allow-empty", "-m", "later", name="Reviewer", email="r@example.org")
    clone = project_copy.parent / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{project_copy}", str(clone)], check=True)
    markdown = wf("gate", "check", "--all", "--markdown", cwd=clone).out
    assert "beyond this shallow clone's history" in markdown and "Mallory" not in markdown


def test_harmless_edits_are_accepted_by_the_gates_and_by_verify(wf, project_copy):
    _ready(wf, project_copy)
    config = project_copy / "training_config.yaml"
    checklist = project_copy / "checklists" / "post_baseline.md"
    edits = [
        ("a manual item reworded", checklist, lambda t: t.replace("Learning curves and results reviewed",
                                                                   "We looked at the curves and the results")),
        ("comments in the config", config, lambda t: "# reviewed by the team\n" + t.replace(
            "  epochs: 15 ", "  epochs: 15  # as agreed ")),
        ("a value written differently", config, lambda t: t.replace("learning_rate: 1.0e-3", "learning_rate: 0.001")),
        ("a team's own item", checklist, lambda t: t + "- [x] Shared with the team <!-- id: shared -->\n"),
        ("a later phase's setting", config, lambda t: t.replace("  n_trials: ", "  n_trials: 7 #", 1)),
        ("CRLF line endings", checklist, lambda t: t.replace("\n", "\r\n")),
    ]
    for what, path, edit in edits:
        before = path.read_bytes()
        path.write_bytes(edit(before.decode()).encode())
        assert path.read_bytes() != before, what
        r = wf("gate", "check", "--all", cwd=project_copy)
        assert r.code == 0, f"{what}: {r.out[-1500:]}"
    code, result = _verify(wf, project_copy, "--all", "--seed", "3")
    assert code == 0 and result["passed"], result
