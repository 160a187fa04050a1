"""Gates nobody can walk around: required items, waivers on the record, a chain of gates that must
hold now, fingerprints of config, data and code, the run each gate judges, honest ticks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import configure, forge_evidence

pytest.importorskip("torch")


def _gate(wf, project, phase=None, *extra):
    r = wf("gate", "check", *([phase] if phase else []), "--json", *extra, cwd=project)
    return r.code, json.loads(r.out)


def _ready_to_finalize(wf, project):
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project).code == 0
    assert wf("decide", "finalize", "--reason", "meets the target", cwd=project).code == 0


# --- required items and waivers -----------------------------------------------------------------

def test_a_deleted_required_item_closes_the_gate_until_it_is_waived_on_the_record(wf, project_copy):
    checklist = project_copy / "checklists" / "reproducibility.md"
    checklist.write_text("\n".join(line for line in checklist.read_text().splitlines()
                                   if "id: config_committed" not in line and "id: seeds_fixed" not in line) + "\n")
    code, gate = _gate(wf, project_copy, "setup")
    missing = {i["id"]: i for i in gate["items"] if i["line"] == 0}
    assert code == 1 and not gate["passed"] and set(missing) == {"config_committed", "seeds_fixed"}
    assert "missing from checklists/reproducibility.md" in missing["seeds_fixed"]["evidence"]
    assert "wf checklist waive reproducibility seeds_fixed" in missing["seeds_fixed"]["evidence"]
    blocked = wf("phase", "baseline", cwd=project_copy)
    assert blocked.code == 3 and "config_committed" in blocked.err and "seeds_fixed" in blocked.err

    assert wf("checklist", "waive", "reproducibility", "config_committed", "--reason", "the demo has no git",
              cwd=project_copy).code == 0
    assert wf("checklist", "waive", "reproducibility", "seeds_fixed", "--reason", "seeded by the data module",
              cwd=project_copy).code == 0
    code, gate = _gate(wf, project_copy, "setup")
    waived = {i["id"]: i["waived"] for i in gate["items"] if i["waived"]}
    assert code == 0 and gate["passed"] and waived["config_committed"]["reason"] == "the demo has no git"
    assert waived["config_committed"]["by"] and waived["config_committed"]["time"]
    table = wf("gate", "check", "setup", cwd=project_copy).out
    assert "waiver on record: reproducibility · config_committed by" in table and "the demo has no git" in table
    assert "(not committed yet)" in table  # outside git there is no commit to name its author
    junit = project_copy / "gates.xml"
    assert wf("gate", "check", "setup", "--junit", str(junit), cwd=project_copy).code == 0
    assert junit.read_text().count("<skipped") == 2
    assert "Waiver on record: setup config_committed" in wf("status", cwd=project_copy).out
    # every later report shows it
    assert wf("report", "baseline", cwd=project_copy).code == 0
    assert "`config_committed` waived by" in (project_copy / "reports" / "baseline_results.md").read_text()

    assert wf("checklist", "unwaive", "reproducibility", "config_committed", cwd=project_copy).code == 0
    assert _gate(wf, project_copy, "setup")[0] == 1


def test_an_auto_item_turned_into_a_manual_tick_does_not_count(wf, project_copy):
    checklist = project_copy / "checklists" / "post_baseline.md"
    checklist.write_text(checklist.read_text().replace("- [x] Loss decreased over epochs "
                                                       "<!-- id: loss_decreased; auto: loss_decreased -->",
                                                       "- [x] Loss decreased <!-- id: loss_decreased -->"))
    _, gate = _gate(wf, project_copy, "baseline")
    item = next(i for i in gate["items"] if i["id"] == "loss_decreased")
    assert not item["checked"] and "requires this item verified by wf's check `loss_decreased`" in item["evidence"]


@pytest.mark.parametrize("command, message", [
    (["checklist", "waive", "reproducibility", "nope", "--reason", "x"], "no item 'nope' in the setup gate"),
    (["checklist", "waive", "reproducibility", "seeds_fixed", "--reason", " "], "--reason is required"),
    (["checklist", "waive", "not_a_list", "seeds_fixed", "--reason", "x"], "'not_a_list' gates no phase"),
    (["checklist", "unwaive", "reproducibility", "seeds_fixed"], "is not waived"),
    (["runs", "select", "nope"], "no run 'nope'"),
])
def test_bad_waivers_and_selections_are_refused(wf, project_copy, command, message):
    before = (project_copy / ".wf" / "state.json").read_bytes()
    r = wf(*command, cwd=project_copy)
    assert r.code == 2 and message in r.err, r.err
    assert (project_copy / ".wf" / "state.json").read_bytes() == before  # nothing written


def test_a_mistyped_checklist_line_is_exit_2_naming_file_and_line(wf, project_copy):
    path = project_copy / "checklists" / "pre_release.md"
    path.write_text(path.read_text().replace("- [ ] Model card reviewed", "- [x]Model card reviewed"))
    r = wf("gate", "check", "finalization", "--json", cwd=project_copy)
    assert r.code == 2 and "pre_release.md" in r.err and "line 10: '- [x]Model card reviewed" in r.err
    assert "GitHub shows no checkbox for it (no space after the brackets)" in " ".join(r.err.split())


# --- the chain: config, code, packages ----------------------------------------------------------

def test_a_config_changed_after_the_baseline_gate_stops_finalization_and_says_what_changed(wf, project_copy):
    _ready_to_finalize(wf, project_copy)
    assert _gate(wf, project_copy, None, "--all")[0] == 0
    configure(project_copy, [("training.learning_rate", "1.0e-2")])
    r = wf("phase", "finalization", cwd=project_copy)
    assert r.code == 3 and "the setup gate (on the path to finalization) re-opened" in r.err
    assert "training.learning_rate 0.001 → 0.01" in r.err and "wf phase setup" in r.err
    code, chain = _gate(wf, project_copy, None, "--all")
    assert code == 1 and [g["phase"] for g in chain["gates"]] == ["setup", "baseline"]
    assert all(g["drift"][0]["kind"] == "config" for g in chain["gates"])
    assert "wf phase setup" in wf("status", cwd=project_copy).out
    # a comment or a layout change is not a change of the config
    configure(project_copy, [("training.learning_rate", "0.001")])
    config = project_copy / "training_config.yaml"
    config.write_text("# reviewed by the team\n" + config.read_text())
    assert _gate(wf, project_copy, None, "--all")[0] == 0


def test_editing_a_later_phases_section_leaves_the_earlier_gates_alone(wf, project_copy):
    _ready_to_finalize(wf, project_copy)
    configure(project_copy, [("finalization.seeds", "2")])
    assert _gate(wf, project_copy, None, "--all")[0] == 0


def test_custom_code_is_fingerprinted(wf, tmp_path):
    assert wf("init", "p", cwd=tmp_path).code == 0
    project = tmp_path / "p"
    (project / "mymodels.py").write_text(
        "import torch.nn as nn\n\n\ndef small(num_classes, in_channels, **kwargs):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))\n")
    configure(project, [("model.name", "custom"), ("model.target", '"mymodels:small"')])
    assert wf("phase", "setup", cwd=project).code == 0
    for item in ("data_documented", "config_committed"):
        wf("checklist", "tick", "reproducibility", item, cwd=project)
    assert _gate(wf, project, "setup")[0] == 0
    source = project / "mymodels.py"
    source.write_text(source.read_text().replace("in_channels * 64", "in_channels * 8 * 8"))
    code, gate = _gate(wf, project, "setup")
    assert code == 1 and gate["drift"] == [
        {"kind": "code", "detail": "model.target 'mymodels': the source (mymodels.py) changed"}]


# --- data fingerprints --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def patches_setup(tmp_path_factory):
    """A project on 6-band NPZ patches through setup, with its manual setup items ticked (once per
    module; each test works on a copy)."""
    root = tmp_path_factory.mktemp("patches")
    subprocess.run([sys.executable, "-m", "mlflow_core", "init", "p", "--example", "patches"], cwd=root, check=True,
                   capture_output=True)
    project = root / "p"
    for args in (["phase", "setup"], ["checklist", "tick", "reproducibility", "data_documented", "config_committed"]):
        r = subprocess.run([sys.executable, "-m", "mlflow_core", *args], cwd=project, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    return project


@pytest.fixture
def patches(patches_setup, tmp_path):
    dest = tmp_path / "p"
    shutil.copytree(patches_setup, dest)
    return dest


def test_data_changes_reopen_setup_per_split_and_a_touch_does_not(wf, patches):
    data = patches / "data" / "patches"
    evidence = json.loads((patches / ".wf" / "evidence" / "setup.json").read_text())
    manifest = evidence["facts"]["fingerprints"]["data"]
    assert manifest["splits"]["train"]["files"] == 160 and manifest["splits"]["test"]["files"] == 48
    assert manifest["splits"]["train"]["arrays"]["image"] == {"shape": [6, 32, 32], "dtype": "float32"}
    assert (patches / manifest["manifest"]).is_file()
    assert _gate(wf, patches, "setup")[0] == 0

    os.utime(data / "train" / "patch_00000.npz")  # touched, not changed
    assert _gate(wf, patches, "setup")[0] == 0

    shutil.copy(data / "train" / "patch_00001.npz", data / "train" / "patch_99999.npz")
    (data / "val" / "patch_00002.npz").unlink()
    with np.load(data / "test" / "patch_00003.npz") as npz:
        arrays = dict(npz)
    arrays["image"][0, 0, 0] += 1
    np.savez_compressed(data / "test" / "patch_00003.npz", **arrays)
    code, gate = _gate(wf, patches, "setup")
    detail = gate["drift"][0]["detail"]
    assert code == 1 and gate["drift"][0]["kind"] == "data"
    assert "train: 1 added (patch_99999.npz)" in detail and "val: 1 removed (patch_00002.npz)" in detail
    assert "test: 1 changed (patch_00003.npz)" in detail
    assert wf("phase", "baseline", cwd=patches).code == 3
    # a fresh clone (no machine cache: no per-file listing) still catches it, named down to the folder
    shutil.rmtree(patches / ".wf" / "cache")
    code, gate = _gate(wf, patches, "setup")
    detail = gate["drift"][0]["detail"]
    assert code == 1 and "train: 1 folder changed (./)" in detail and "test: 1 folder changed (./)" in detail


def test_a_training_file_copied_into_test_is_an_overlap_named_by_file(wf, patches):
    data = patches / "data" / "patches"
    shutil.copy(data / "train" / "patch_00007.npz", data / "test" / "patch_77777.npz")
    r = wf("phase", "setup", cwd=patches)
    assert r.code == 1
    problems = json.loads((patches / ".wf" / "evidence" / "setup.json").read_text())["facts"]["data"]["problems"]
    assert any("1 test samples also appear in train" in p and "patch_77777.npz" in p and "patch_00007.npz" in p
               for p in problems), problems


def test_a_manifest_that_cannot_be_read_is_exit_2(wf, patches):
    evidence = json.loads((patches / ".wf" / "evidence" / "setup.json").read_text())
    (patches / evidence["facts"]["fingerprints"]["data"]["manifest"]).write_text("{broken")
    r = wf("gate", "check", "setup", cwd=patches)
    assert r.code == 2 and "cannot be read as a wf data manifest" in r.err


# --- which run counts --------------------------------------------------------------------------

def test_an_interrupted_run_never_replaces_the_run_a_gate_judges(project_copy):
    report = project_copy / "reports" / "baseline_results.md"
    evidence = project_copy / ".wf" / "evidence" / "baseline.json"
    before = report.read_bytes(), evidence.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_core", "phase", "baseline", "--override-gate", "again"],
                            cwd=project_copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = sorted(project_copy.glob("runs/baseline-*/logs/steps.csv"))
        if len(logs) == 2 and any(len(p.read_text().splitlines()) > 30 for p in logs[-1:]):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)  # the terminal went away: saved like SIGTERM
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, out[-2000:] + err
    assert "wf phase baseline --resume" in err
    assert (report.read_bytes(), evidence.read_bytes()) == before
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    assert state["runs"][-1]["status"] == "interrupted"
    r = subprocess.run([sys.executable, "-m", "mlflow_core", "gate", "check", "baseline", "--json"], cwd=project_copy,
                       capture_output=True, text=True)
    judged = json.loads(r.stdout)["run"]
    assert judged["run_id"] != state["runs"][-1]["run_id"] and judged["selected_by"].startswith("the latest run")


def test_runs_select_chooses_the_run_a_gate_judges_and_reports_say_so(wf, project_copy):
    first = json.loads((project_copy / ".wf" / "evidence" / "baseline.json").read_text())["run_id"]
    configure(project_copy, [("training.epochs", "2")])
    assert wf("phase", "baseline", "--override-gate", "a shorter run", cwd=project_copy).code in (0, 1)
    second = json.loads((project_copy / ".wf" / "evidence" / "baseline.json").read_text())["run_id"]
    assert second != first
    assert wf("runs", "select", first, cwd=project_copy).code == 0
    assert json.loads((project_copy / ".wf" / "evidence" / "baseline.json").read_text())["run_id"] == first
    report = (project_copy / "reports" / "baseline_results.md").read_text()
    assert f"judges this run, `{first}` (chosen with `wf runs select` by" in report
    assert f"{first} ◆" in wf("runs", cwd=project_copy).out
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    assert any(e["event"] == "run_selected" and e["run_id"] == first for e in state["history"])


# --- honest ticks -----------------------------------------------------------------------------

def test_ticks_say_who_made_them(wf, project_copy):
    _, gate = _gate(wf, project_copy, "setup")
    by = {i["id"]: i["ticked_by"] for i in gate["items"]}
    assert by["data_documented"]["kind"] == "command" and by["data_documented"]["name"] == "wf quickstart"
    assert by["config_valid"]["kind"] == "wf"
    table = wf("gate", "check", "setup", cwd=project_copy).out
    assert "ticked by wf quickstart" in table and "not by a person" in table
    path = project_copy / "checklists" / "post_baseline.md"
    path.write_text(path.read_text().replace("- [ ] Learning curves", "- [x] Learning curves"))
    item = next(i for i in _gate(wf, project_copy, "baseline")[1]["items"] if i["id"] == "results_reviewed")
    assert item["ticked_by"]["kind"] == "person" and "editing the checklist file" in item["evidence"]


# --- terminals that go away ---------------------------------------------------------------------

def test_a_closed_stdout_never_fails_a_run(project_copy):
    configure(project_copy, [("training.epochs", "2")])
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_core", "phase", "baseline", "--override-gate", "pipe"],
                            cwd=project_copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # `wf phase baseline | head -1`
    proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    assert proc.returncode in (0, 1), err  # the run's verdict, not a crash
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    run = state["runs"][-1]
    assert run["status"] in ("completed", "early_stopped", "failed_criteria") and "Traceback" not in err
    log = (project_copy / run["dir"] / "logs" / "training.log").read_text()
    assert "epoch 2/2" in log


# --- class names travel -------------------------------------------------------------------------

def test_imagefolder_class_names_reach_reports_the_confusion_matrix_and_the_export(wf, tmp_path):
    from PIL import Image

    assert wf("init", "p", cwd=tmp_path).code == 0
    project = tmp_path / "p"
    rng = np.random.default_rng(0)
    for split, count in (("train", 32), ("val", 12), ("test", 4)):
        for name, shade in (("circle", 40), ("square", 200)):
            folder = project / "data" / "shapes" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(shade, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    # enough to learn the two shades: the baseline gate holds a model to beating chance on validation
    configure(project, [("data.source", "imagefolder"), ("data.path", "data/shapes"), ("training.epochs", "4"),
                        ("training.learning_rate", "0.01"),
                        ("validation.target", "0.5"), ("finalization.epochs", "1"), ("finalization.seeds", "1"),
                        ("finalization.export", "[state_dict]")])
    assert wf("phase", "setup", cwd=project).code == 0
    assert "circle (0): 32, square (1): 32" in (project / "reports" / "setup_report.md").read_text()
    assert wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=project).code == 0
    assert wf("phase", "baseline", cwd=project).code in (0, 1)
    assert "2 classes (circle, square)" in (project / "reports" / "baseline_results.md").read_text()
    wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project)
    assert wf("decide", "finalize", cwd=project).code == 0
    r = wf("phase", "finalization", cwd=project)
    assert r.code in (0, 1), r.err
    assert json.loads((project / "export" / "manifest.json").read_text())["classes"] == {"0": "circle",
                                                                                         "1": "square"}
    card = (project / "reports" / "final_report.md").read_text()
    assert "| circle (0) |" in card and "| square (1) |" in card
    assert "\nPython 3." in card and " · torch " in card  # the environment line says what each version is of
    assert (project / "reports" / "figures" / "final_confusion_matrix.png").is_file()


@pytest.mark.parametrize("names, message", [
    ('["a", "b"]', "data.class_names has 2 names, and the data has 10 classes"),
    ('["a", "a", "b", "c", "d", "e", "f", "g", "h", "i"]', "holds the same name twice"),
])
def test_class_names_that_do_not_fit_are_bad_input(wf, tmp_path, names, message):
    assert wf("init", "p", cwd=tmp_path).code == 0
    configure(tmp_path / "p", [("data.class_names", names)])
    r = wf("phase", "setup", cwd=tmp_path / "p")
    assert r.code == 2 and message in r.err, r.err


def test_runs_select_refuses_a_run_that_did_not_run_to_its_end(wf, project_copy):
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import RunRecord, load_state, save_state

    project = Project(project_copy)
    state = load_state(project)
    state.runs.append(RunRecord(run_id="baseline-stopped", phase="baseline", status="interrupted", started_at="t",
                                finished_at="t", dir="runs/baseline-stopped"))
    save_state(project, state)
    before = (project_copy / ".wf" / "evidence" / "baseline.json").read_bytes()
    r = wf("runs", "select", "baseline-stopped", cwd=project_copy)
    assert r.code == 2 and "run baseline-stopped is interrupted" in r.err
    assert (project_copy / ".wf" / "evidence" / "baseline.json").read_bytes() == before


def test_gate_check_takes_a_phase_or_all_not_both(wf, project_copy):
    r = wf("gate", "check", "setup", "--all", cwd=project_copy)
    assert r.code == 2 and "give a phase or --all, not both" in r.err


def test_a_message_quoting_a_checklist_line_shows_it_as_written(wf, project_copy):
    """`[x]` in a quoted line is text, not rich markup."""
    path = project_copy / "checklists" / "pre_release.md"
    path.write_text(path.read_text().replace("- [ ] Model card reviewed", "- [x]Model card reviewed"))
    assert "'- [x]Model card reviewed" in wf("gate", "check", "finalization", cwd=project_copy).err
    assert "- [x]Model card" in wf("status", cwd=project_copy).out.replace("│", "").replace("\n", "")


def test_turning_a_tracker_on_after_the_gates_passed_reopens_nothing(wf, project_copy):
    """Trackers change no computation (fingerprints.NO_COMPUTATION): the gates stay as they were, and
    the next run may start; a setting that trains differently still re-opens them."""
    _ready_to_finalize(wf, project_copy)
    configure(project_copy, [("monitoring.tensorboard", "true"), ("monitoring.mlflow", "true"),
                             ("monitoring.mlflow_uri", "http://127.0.0.1:1")])
    code, gates = _gate(wf, project_copy, None, "--all")
    assert code == 0 and all(not g["drift"] for g in gates["gates"]), gates
    configure(project_copy, [("training.learning_rate", "0.002")])
    code, gates = _gate(wf, project_copy, None, "--all")
    assert code == 1 and "training.learning_rate" in gates["gates"][0]["drift"][0]["detail"]


def test_verify_compares_every_file_again_and_a_forged_file_overlap_does_not_recompute(wf, patches):
    """Setup's file-by-file comparison of the splits is one of its data checks: `wf verify` does it
    again, and evidence edited to hide a copy (its hashes recomputed) fails there."""
    r = wf("verify", "setup", "--json", cwd=patches)
    checks = {c["name"]: c for p in json.loads(r.out)["phases"] for c in p["claims"]}
    assert r.code == 0 and checks["data checks"]["status"] == "verified", r.out[-2000:]

    forge_evidence(patches, "setup", lambda facts: facts["data"]["file_overlaps"].update(train_val=3))
    r = wf("verify", "setup", "--json", cwd=patches)
    checks = {c["name"]: c for p in json.loads(r.out)["phases"] for c in p["claims"]}
    assert r.code == 1 and checks["data checks"]["status"] == "failed"
    assert "file_overlaps" in checks["data checks"]["detail"]
