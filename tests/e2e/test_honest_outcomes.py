"""Honest outcomes never dead-end the path, and a failed command overwrites nothing, in real `wf`
processes on the demo: setup → baseline → diagnostics on a healthy run (nothing to fix) →
optimization without improvement → finalization of the baseline's config ends with every gate green
and no waiver; every phase command that fails leaves the committed files as they were; grayscale
images keep their one channel; model.target needs model.name custom; a torchvision that does not fit
torch is exit 2 with the fix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlflow_core.cli import main
from mlflow_core.workflow.scaffold import init_project
from tests.helpers import configure, write_crashing_model

pytest.importorskip("optuna")

WF = [sys.executable, "-m", "mlflow_core"]
COMMITTED = ("reports", "checklists", "configs", "diagnostics", "export", ".wf/evidence", ".wf/state.json")


def _wf(project: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run([*WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def _quick(project: Path, *args: str) -> None:
    """A command that trains nothing (a tick, a decision), in this process."""
    cwd = os.getcwd()
    try:
        os.chdir(project)
        try:
            main(list(args))
        except SystemExit as exc:
            assert exc.code in (0, None), f"wf {' '.join(args)} exited {exc.code}"
    finally:
        os.chdir(cwd)


def committed_files(project: Path) -> dict[str, str]:
    """Every file a project commits, by its sha256."""
    out = {}
    for name in COMMITTED:
        root = project / name
        for path in sorted([root] if root.is_file() else root.rglob("*") if root.is_dir() else []):
            if path.is_file():
                out[path.relative_to(project).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def whole_path(tmp_path_factory) -> Path:
    """The demo's whole path, each phase in its own process, following the checklists' advice."""
    root = tmp_path_factory.mktemp("path")
    demo = init_project(root / "demo").root
    configure(demo, [("training.epochs", "8")])  # the comparison trains it 4 times: a short demo
    for phase in ("setup", "baseline"):
        ran = _wf(demo, "phase", phase)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
        if phase == "setup":
            _quick(demo, "checklist", "tick", "reproducibility", "data_documented", "config_committed")
    _quick(demo, "checklist", "tick", "post_baseline", "results_reviewed")
    _quick(demo, "decide", "diagnose", "--reason", "check the healthy baseline")
    diagnostics = _wf(demo, "phase", "diagnostics")
    assert diagnostics.returncode == 0, diagnostics.stdout[-3000:] + diagnostics.stderr
    _quick(demo, "checklist", "tick", "post_diagnostics", "fix_applied")
    _quick(demo, "decide", "optimize", "--reason", "nothing to fix")
    # a search space holding the baseline's own values only: the sweep cannot beat it
    text = (demo / "training_config.yaml").read_text()
    start = text.index("  search_space:")
    end = text.index("  n_trials:")
    text = (text[:start] + "  search_space:\n    training.learning_rate: {type: categorical, choices: [1.0e-3]}\n"
            + text[end:])
    (demo / "training_config.yaml").write_text(text)
    configure(demo, [("optimization.n_trials", "2"), ("optimization.trial_epochs", "1"), ("optimization.seeds", "2"),
                     ("optimization.lr_find", "false")])
    optimization = _wf(demo, "phase", "optimization")
    assert optimization.returncode == 0, optimization.stdout[-3000:] + optimization.stderr
    _quick(demo, "checklist", "tick", "post_optimization", "sweep_reviewed", "chosen_config_committed")
    finalization = _wf(demo, "phase", "finalization")
    assert finalization.returncode == 0, finalization.stdout[-3000:] + finalization.stderr
    _quick(demo, "checklist", "tick", "pre_release", "chosen_config_confirmed", "model_card_reviewed")
    (demo / "logs.json").write_text(json.dumps({"diagnostics": diagnostics.stdout, "optimization": optimization.stdout}))
    return demo


@pytest.fixture
def walked(whole_path, tmp_path) -> Path:
    copy = tmp_path / "demo"
    shutil.copytree(whole_path, copy)
    return copy


def test_the_path_that_followed_the_checklists_advice_is_green_in_ci(whole_path):
    logs = json.loads((whole_path / "logs.json").read_text())
    # diagnostics on a healthy run: an outcome with its way on, exit 0
    assert "nothing to fix: run baseline-" in " ".join(logs["diagnostics"].split())
    report = (whole_path / "reports" / "diagnosis_auto.md").read_text()
    assert "## Next step\n**Nothing to fix.**" in report and "wf decide optimize" in report
    # the sweep did not beat the baseline: an outcome too, and the baseline's config stays
    evidence = json.loads((whole_path / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    assert evidence["comparison"]["significant"] is False
    assert "the baseline's config stays" in " ".join(logs["optimization"].split())
    gate = _wf(whole_path, "gate", "check", "--all")
    assert gate.returncode == 0, gate.stdout
    assert "Every gate on the path (setup → baseline → diagnostics → optimization → finalization) holds." in gate.stdout
    state = json.loads((whole_path / ".wf" / "state.json").read_text())
    assert not [e for e in state["history"] if e["event"] in ("checklist_waive", "gate_override")]
    # every claim recomputes: the diagnosis made again, the sweep's comparison over seeds and its best trial,
    # the final model's test figures and its export, the training of every run
    verify = _wf(whole_path, "verify", "--all", "--json")
    claims = [(p["phase"], c) for p in json.loads(verify.stdout)["phases"] for c in p["claims"]]
    assert verify.returncode == 0 and all(c["status"] == "verified" for _, c in claims), verify.stdout
    verified = {(phase, c["name"]) for phase, c in claims}
    assert {("finalization", "export export/model_state_dict.pt"), ("optimization", "comparison"),
            ("diagnostics", "diagnosis")} <= verified


def _template_refused(project: Path, template: str) -> None:
    """A project's report template that reaches for Python's modules: the render is refused (exit 2)
    after the run has trained and written its outcome's first files."""
    own = project / "templates" / "reports"
    own.mkdir(parents=True, exist_ok=True)
    (own / template).write_text("{{ cycler.__init__.__globals__ }}\n")


@pytest.mark.parametrize("phase, break_it, code", [
    ("setup", "target_typo", 2),  # found before anything is written
    ("setup", "data_code_crashes", 1),  # the project's data code raises once the run has started
    ("baseline", "model_crashes_mid_training", 1),
    ("diagnostics", "report_template_refused", 2),  # after the evidence is written
    ("optimization", "report_template_refused", 2),  # after the trials, the optimized config and the figures
    ("finalization", "report_template_refused", 2),  # after the final training and the exports
])
def test_a_phase_command_that_fails_leaves_every_committed_file_as_it_was(walked, phase, break_it, code):
    if break_it == "target_typo":
        (walked / "mymodel.py").write_text("import torch\nclass SmallCNN(torch.nn.Module):\n    pass\n")
        configure(walked, [("model.name", "custom"), ("model.target", "mymodel:SmalCNN")])
    elif break_it == "data_code_crashes":
        (walked / "mydata.py").write_text("def build():\n    raise RuntimeError('the data share is gone')\n")
        configure(walked, [("data.source", "custom"), ("data.target", "mydata:build")])
    elif break_it == "model_crashes_mid_training":
        write_crashing_model(walked)
    else:
        template = {"diagnostics": "diagnosis.md.j2", "optimization": "optimization_results.md.j2",
                    "finalization": "final_report.md.j2"}[phase]
        _template_refused(walked, template)
    before = committed_files(walked)
    runs_before = set((walked / "runs").iterdir())
    args = ["phase", phase] + ([] if phase == "setup" else ["--override-gate", "tests: a phase run again"])
    r = _wf(walked, *args)
    assert r.returncode == code, r.stdout[-3000:] + r.stderr
    assert "Traceback" not in r.stderr
    after = committed_files(walked)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
    new_runs = set((walked / "runs").iterdir()) - runs_before
    if code == 2 and break_it == "target_typo":
        assert not new_runs  # nothing ran: not even a run folder
        assert "training_config.yaml: model.target = 'mymodel:SmalCNN': cannot import it" in " ".join(r.stderr.split())
    # the gates judge what they judged before, and say so
    config_changed = break_it != "report_template_refused"  # the setup gate re-opens on the config alone
    assert _wf(walked, "gate", "check", "--all").returncode == (1 if config_changed else 0)


def test_wf_report_setup_renders_the_environment_report_again(walked):
    env = walked / "reports" / "environment.md"
    before = env.read_bytes()
    env.write_text(env.read_text() + "\nedited by hand\n")
    assert "edited after wf wrote it" in _wf(walked, "gate", "check", "setup").stdout.replace("\n", " ")
    r = _wf(walked, "report", "setup")
    assert r.returncode == 0, r.stderr
    assert env.read_bytes() != before and "edited by hand" not in env.read_text()
    assert _wf(walked, "gate", "check", "setup").returncode == 0


def _gray_images(root: Path, count: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("shirt", "shoe"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (28, 28), dtype=np.uint8) // (1 if label == "shirt" else 3)
                Image.fromarray(pixels, "L").save(folder / f"{i}.png")


def test_grayscale_images_keep_their_one_channel_unless_data_channels_says_otherwise(tmp_path):
    project = init_project(tmp_path / "fashion").root
    _gray_images(project / "data" / "fashion")
    configure(project, [("data.source", "imagefolder"), ("data.path", "data/fashion"), ("data.pack", "off"),
                        ("training.device", "cpu"), ("reproducibility.verify_steps", "2")])
    r = _wf(project, "phase", "setup")
    report = (project / "reports" / "setup_report.md").read_text()
    assert "a batch of [2, 1, 28, 28]" in report, r.stdout[-2000:]
    assert "channels: 1, the images' own (L 24 of 24 sampled)" in report
    configure(project, [("data.channels", "3")])
    _wf(project, "phase", "setup")
    report = (project / "reports" / "setup_report.md").read_text()
    assert "a batch of [2, 3, 28, 28]" in report and "channels: 3 (data.channels)" in report


def test_model_target_needs_model_name_custom_and_reports_name_the_custom_model_by_it(tmp_path):
    project = init_project(tmp_path / "p").root
    configure(project, [("model.name", "resnet18"), ("model.target", "mymodel:SmallCNN")])
    before = committed_files(project)
    r = _wf(project, "phase", "setup")
    message = " ".join(r.stderr.split())
    assert r.returncode == 2 and "model.target 'mymodel:SmallCNN' is used only with model.name 'custom'" in message
    assert "model.name is 'resnet18'" in message and "training_config.yaml" in message
    assert committed_files(project) == before
    (project / "mymodel.py").write_text(
        "import torch\nclass SmallCNN(torch.nn.Sequential):\n    def __init__(self, num_classes, in_channels):\n"
        "        super().__init__(torch.nn.Flatten(), torch.nn.Linear(64 * in_channels, num_classes))\n")
    configure(project, [("model.name", "custom"), ("training.device", "cpu"), ("reproducibility.verify_steps", "2")])
    r = _wf(project, "phase", "setup")
    assert "`mymodel:SmallCNN`:" in (project / "reports" / "setup_report.md").read_text(), r.stdout[-2000:]


def _torchvision_without_its_operators(root: Path, version: str | None = None) -> Path:
    """torchvision's own Python files, less its compiled library: what a torchvision built for another
    torch looks like to this one (its operators do not load). `version`: what its metadata says."""
    import importlib.util

    real = Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
    shadow = root / "shadow"
    (shadow / "torchvision").mkdir(parents=True)
    for entry in real.iterdir():
        if entry.suffix != ".so" and entry.name != "__pycache__":
            (shadow / "torchvision" / entry.name).symlink_to(entry)
    info = next(real.parent.glob("torchvision-*.dist-info"))
    shutil.copytree(info, shadow / info.name)
    if version:
        metadata = shadow / info.name / "METADATA"
        metadata.write_text("\n".join(f"Version: {version}" if line.startswith("Version:") else line
                                      for line in metadata.read_text().splitlines()) + "\n")
    return shadow


@pytest.mark.parametrize("version", [None, "0.24.1"], ids=["same-version-other-build", "older-release"])
def test_a_torchvision_that_does_not_fit_torch_is_exit_2_with_the_fix(tmp_path, version):
    from importlib import metadata

    project = init_project(tmp_path / "p").root
    shadow = _torchvision_without_its_operators(tmp_path, version)
    before = committed_files(project)
    r = _wf(project, "phase", "setup", env={"PYTHONPATH": str(shadow)})
    message = " ".join(r.stderr.split())
    torch_version = metadata.version("torch")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr
    shown = version or metadata.version("torchvision")
    assert f"torchvision {shown} does not match torch {torch_version}" in message
    assert "install both from the same index: `pip install --force-reinstall --no-deps 'torch==" in message
    assert "Traceback" not in r.stderr
    if version is None:
        assert "operator torchvision::nms does not exist" in message
    else:
        assert "pairs with torchvision 0.29" in message or "pairs with torchvision 0." in message
    assert committed_files(project) == before


def _forge(project: Path, phase: str, edit) -> None:
    """An edit of a phase's facts with every hash recomputed, as a pull-request author can make it."""
    from mlflow_core.workflow.evidence import canonical_sha256

    path = project / ".wf" / "evidence" / f"{phase}.json"
    record = json.loads(path.read_text())
    edit(record["facts"])
    record["sha256"] = canonical_sha256({k: record[k] for k in ("phase", "run_id", "facts", "project_id",
                                                                "entered_from") if k in record})
    path.unlink()
    path.write_text(json.dumps(record))
    state = json.loads((project / ".wf" / "state.json").read_text())
    for run in state["runs"]:
        if run["run_id"] == record["run_id"]:
            run["summary"]["evidence_sha256"] = record["sha256"]
    (project / ".wf" / "state.json").write_text(json.dumps(state))


def _failed(project: Path, phase: str) -> list[dict]:
    verify = _wf(project, "verify", phase, "--seed", "1", "--json")
    assert verify.returncode == 1, verify.stdout[-2000:]
    return [c for p in json.loads(verify.stdout)["phases"] for c in p["claims"] if c["status"] == "failed"]


def test_forged_sweep_and_diagnosis_claims_do_not_recompute(walked):
    def better(facts):  # the sweep "improved": the optimized runs' values raised, the verdict rewritten
        comparison = facts["comparison"]
        comparison["optimized"] = [v + 0.01 for v in comparison["optimized"]]
        comparison.update(significant=True, verdict="the optimized config is better")
    _forge(walked, "optimization", better)
    assert _wf(walked, "gate", "check", "optimization").returncode in (0, 1)  # judged from the files alone
    failed = _failed(walked, "optimization")
    assert any(c["name"] == "comparison" for c in failed), failed

    def surer(facts):  # a finding made more certain than the diagnostics measured
        facts["diagnosis"]["findings"] = [{"diagnostic": "overfitting", "cause": "overfitting", "confidence": 0.95,
                                           "evidence": {}, "fix": "more data"}]
    _forge(walked, "diagnostics", surer)
    failed = _failed(walked, "diagnostics")
    assert failed[0]["name"] == "diagnosis" and "recorded [('overfitting'" in failed[0]["detail"]


def test_another_runs_facts_under_this_runs_name_do_not_recompute(walked):
    finalization = json.loads((walked / ".wf" / "evidence" / "finalization.json").read_text())["facts"]
    member = finalization["seeds"][0]["run_dir"]

    def borrowed(facts):  # the baseline's facts pointed at a final member's files
        facts["checkpoints"]["best"]["path"] = f"{member}/checkpoints/best_model.pt"
        facts["checkpoints"]["best"]["sha256"] = __import__("hashlib").sha256(
            (walked / member / "checkpoints" / "best_model.pt").read_bytes()).hexdigest()
    _forge(walked, "baseline", borrowed)
    failed = _failed(walked, "baseline")
    assert failed[0]["name"] == "run" and "not by 'baseline-" in failed[0]["detail"]
