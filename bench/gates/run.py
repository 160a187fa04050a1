"""Can a gate be walked around? A project on 6-band NPZ patches (and one whose data comes from a
custom module) is taken to the finalization decision through the real CLI, then copied and tampered
with in many ways, and edited harmlessly in others. `wf gate check --all` must catch every tampering
(exit 1, or 2 for a file that no longer parses) and accept every harmless edit (exit 0). Last, the
time `wf gate check --all` takes on a project whose data folder holds 100,000 files.

    python bench/gates/run.py [--files 100000] [--skip-timing]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

WF = [sys.executable, "-m", "mlflow_core"]


def wf(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*WF, *args], cwd=project, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"`wf {' '.join(args)}` failed ({r.returncode}) in {project}:\n{r.stdout[-2000:]}{r.stderr}")
    return r


def configure(project: Path, settings: dict[str, str]) -> None:
    from mlflow_core.workflow.scaffold import set_yaml_value

    config = project / "training_config.yaml"
    text = config.read_text()
    for key, value in settings.items():
        text = set_yaml_value(text, key, value)
    config.write_text(text)


def to_the_finalization_decision(project: Path) -> None:
    wf(project, "phase", "setup")
    for item in ("data_documented", "config_committed"):
        wf(project, "checklist", "tick", "reproducibility", item)
    wf(project, "phase", "baseline", check=False)  # its verdict is not the point here
    wf(project, "checklist", "tick", "post_baseline", "results_reviewed")
    wf(project, "decide", "finalize", "--reason", "bench")
    r = wf(project, "gate", "check", "--all", check=False)
    if r.returncode != 0:
        raise SystemExit(f"the untouched project does not pass its gates:\n{r.stdout[-3000:]}")


def patches_project(root: Path) -> Path:
    subprocess.run([*WF, "init", "p", "--example", "patches"], cwd=root, check=True, capture_output=True)
    project = root / "p"
    configure(project, {"training.epochs": "3", "validation.target": "0.5"})
    to_the_finalization_decision(project)
    return project


CUSTOM_DATA = '''"""The project's data module: the NPZ patches, read by hand."""
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset


def build(root="data/patches"):
    out = {}
    for split in ("train", "val", "test"):
        files = sorted(Path(root, split).glob("*.npz"))
        images = [np.load(f)["image"] for f in files]
        labels = [int(np.load(f)["label"]) for f in files]
        out[split] = TensorDataset(torch.tensor(np.stack(images)), torch.tensor(labels))
    return out
'''


def custom_project(root: Path) -> Path:
    subprocess.run([*WF, "init", "c", "--example", "patches"], cwd=root, check=True, capture_output=True)
    project = root / "c"
    (project / "mydata.py").write_text(CUSTOM_DATA)
    configure(project, {"data.source": "custom", "data.target": '"mydata:build"', "data.num_classes": "4",
                        "training.epochs": "3", "validation.target": "0.5"})
    to_the_finalization_decision(project)
    return project


# --- edits --------------------------------------------------------------------------------------

def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise SystemExit(f"{path}: {old!r} not found")
    path.write_text(text.replace(old, new))


def drop_line(path: Path, marker: str) -> None:
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if marker not in line))


def evidence(project: Path, phase: str) -> dict:
    return json.loads((project / ".wf" / "evidence" / f"{phase}.json").read_text())


def change_npz(path: Path) -> None:
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["image"] = arrays["image"].copy()
    arrays["image"][0, 0, 0] += 0.5
    np.savez_compressed(path, **arrays)


def edit_evidence(project: Path) -> None:
    path = project / ".wf" / "evidence" / "baseline.json"
    raw = json.loads(path.read_text())
    raw["facts"]["best_train_loss"] = 0.0001
    path.write_text(json.dumps(raw))


def edit_best_checkpoint(project: Path) -> None:
    best = evidence(project, "baseline")["facts"]["checkpoints"]["best"]["path"]
    with open(project / best, "ab") as f:
        f.write(b"\0")


def interrupted_run(project: Path) -> None:
    proc = subprocess.Popen([*WF, "phase", "baseline", "--override-gate", "bench: a run that gets interrupted"],
                            cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = sorted(project.glob("runs/baseline-*/logs/steps.csv"), key=lambda p: p.stat().st_mtime)
        if len(steps) >= 2 and len(steps[-1].read_text().splitlines()) > 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


P = "checklists/post_baseline.md"
R = "checklists/reproducibility.md"
TAMPERING: list[tuple[str, str, Callable[[Path], None]]] = [
    ("checklist: an item mangled ('- [x]Text')", "p", lambda p: replace_in(p / P, "- [x] Learning", "- [x]Learning")),
    ("checklist: an auto item's line deleted", "p", lambda p: drop_line(p / P, "id: loss_decreased")),
    ("checklist: a manual item's line deleted", "p", lambda p: drop_line(p / R, "id: config_committed")),
    ("checklist: an item's id renamed", "p",
     lambda p: replace_in(p / P, "id: results_reviewed", "id: results_seen")),
    ("checklist: an auto item turned into a tick", "p",
     lambda p: replace_in(p / P, "id: no_nan_loss; auto: no_nan_loss", "id: no_nan_loss")),
    ("config: learning rate changed after the gate", "p",
     lambda p: configure(p, {"training.learning_rate": "3.0e-3"})),
    ("config: the model widened after the gate", "p", lambda p: configure(p, {"model.channels": "[32, 64, 64, 64]"})),
    ("data: a file added to train", "p", lambda p: shutil.copy(p / "data/patches/train/patch_00001.npz",
                                                              p / "data/patches/train/patch_90001.npz")),
    ("data: a file removed from val", "p", lambda p: (p / "data/patches/val/patch_00003.npz").unlink()),
    ("data: a test file's content changed", "p", lambda p: change_npz(p / "data/patches/test/patch_00004.npz")),
    ("data: a training file copied into test", "p", lambda p: shutil.copy(p / "data/patches/train/patch_00005.npz",
                                                                        p / "data/patches/test/patch_90005.npz")),
    ("code: the custom data module changed", "c",
     lambda p: replace_in(p / "mydata.py", 'root="data/patches"', 'root="data/patches", limit=None')),
    ("evidence: a fact edited by hand", "p", edit_evidence),
    ("report: baseline_results.md edited", "p",
     lambda p: (p / "reports/baseline_results.md").write_text("# all good\n")),
    ("report: the environment report edited", "p",
     lambda p: (p / "reports/environment.md").write_text("# another machine\n")),
    ("checkpoint: best_model.pt changed", "p", edit_best_checkpoint),
    ("waiver: a required item waived", "p",
     lambda p: wf(p, "checklist", "waive", "post_baseline", "results_reviewed", "--reason", "bench")),
]

HARMLESS: list[tuple[str, str, Callable[[Path], None]]] = [
    ("checklist: an item reworded", "p",
     lambda p: replace_in(p / P, "Learning curves and results reviewed", "Curves and per-class results read")),
    ("checklist: items reordered", "p", lambda p: _reorder(p / P)),
    ("checklist and config: comments added", "p", lambda p: (
        (p / P).write_text((p / P).read_text() + "\n<!-- reviewed in PR #12 -->\nA note for reviewers.\n"),
        (p / "training_config.yaml").write_text("# baseline approved on 2026-12-01\n"
                                                 + (p / "training_config.yaml").read_text()))),
    ("checklist: an item of the team's own, ticked", "p", lambda p: (p / P).write_text(
        (p / P).read_text() + "- [x] Shared in the lab channel <!-- id: shared_with_lab -->\n")),
    ("data: a file touched, not changed", "p",
     lambda p: os.utime(p / "data/patches/train/patch_00006.npz")),
    ("config: a later phase's setting (finalization.seeds)", "p",
     lambda p: configure(p, {"finalization.seeds": "3"})),
    ("a new baseline run that is interrupted", "p", interrupted_run),
]


def _reorder(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    items = [i for i, line in enumerate(lines) if line.startswith("- [")]
    first, second = items[0], items[1]
    lines[first], lines[second] = lines[second], lines[first]
    path.write_text("".join(lines))


def verdict(project: Path) -> tuple[int, str]:
    r = wf(project, "gate", "check", "--all", "--json", check=False)
    return r.returncode, r.stdout if r.returncode != 2 else r.stderr


def waiver_shown(project: Path) -> bool:
    """A waiver passes its gate by design: it is caught when the gate check shows who waived what, and why."""
    code, out = verdict(project)
    items = [i for g in json.loads(out)["gates"] for i in g["items"]] if code in (0, 1) else []
    return any(i["waived"] and i["waived"]["by"] and i["waived"]["reason"] for i in items)


def try_edits(bases: dict[str, Path], edits, work: Path, harmful: bool) -> int:
    good = 0
    for number, (name, base, edit) in enumerate(edits):
        project = work / f"{'tamper' if harmful else 'harmless'}-{number}"
        shutil.copytree(bases[base], project, symlinks=True)
        edit(project)
        code, out = verdict(project)
        if harmful:
            ok = waiver_shown(project) if name.startswith("waiver") else code != 0
            what = ("caught" if ok else "MISSED") + (f" (exit {code})" if code else " (shown on the record)")
        else:
            ok = code == 0
            what = "accepted" if ok else f"REFUSED (exit {code})"
        good += ok
        print(f"  {'✔' if ok else '✘'} {name:55} {what}")
        if not ok:
            print("     " + out[-800:].replace("\n", "\n     "))
        shutil.rmtree(project, ignore_errors=True)
    return good


def big_project(work: Path, files: int) -> Path:
    """A project whose data folder holds `files` NPZ patches (6×8×8), through setup and a one-epoch
    baseline (kept and reused when `work` already holds it)."""
    from mlflow_core.workflow.scaffold import write_patches

    project = work / "big"
    if (project / ".wf" / "evidence" / "baseline.json").is_file():
        return project
    subprocess.run([*WF, "init", "big", "--example", "patches"], cwd=work, check=True, capture_output=True)
    shutil.rmtree(project / "data" / "patches")
    started = time.perf_counter()
    write_patches(project / "data" / "patches", size=8, train=int(files * 0.8), val=files // 10, test=files // 10)
    print(f"  wrote {files:,} files in {time.perf_counter() - started:.0f} s")
    configure(project, {"training.epochs": "1", "training.batch_size": "512", "validation.target": "0.1",
                        "model.channels": "[8, 8, 8, 8]"})
    for phase in ("setup", "baseline"):
        started = time.perf_counter()
        wf(project, "phase", phase, check=False)
        print(f"  wf phase {phase}: {time.perf_counter() - started:.0f} s")
        if phase == "setup":
            for item in ("data_documented", "config_committed"):
                wf(project, "checklist", "tick", "reproducibility", item)
    return project


def timing(work: Path, files: int) -> None:
    """`wf gate check --all` on the big project, with this machine's caches warm (the usual case) and
    cold (a fresh clone: every file hashed once), next to the start-up of wf's CLI alone."""
    project = big_project(work, files)

    def seconds(command: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(command, cwd=project, check=False, capture_output=True)
        return time.perf_counter() - started

    check = [*WF, "gate", "check", "--all"]
    seconds(check)  # the first check after this machine's setup fills the caches if anything is missing
    warm = [seconds(check) for _ in range(5)]
    cold = []
    for _ in range(2):
        shutil.rmtree(project / ".wf" / "cache", ignore_errors=True)
        cold.append(seconds(check))
    startup = [seconds([*WF, "--version"]) for _ in range(5)]
    w, c, b = statistics.median(warm), statistics.median(cold), statistics.median(startup)
    print(f"  wf gate check --all, {files:,} data files: median {w:.2f} s with this machine's caches warm "
          f"(goal ≤ 2 s: {'met' if w <= 2 else 'NOT met'}), {c:.2f} s cold (every file hashed); `wf --version` "
          f"alone takes {b:.2f} s (ratio {w / b:.1f}×)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="keep the 100,000-file project here and reuse it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wf-gates-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        bases = {"p": patches_project(work), "c": custom_project(work)}
        print(f"Two projects taken to the finalization decision in {time.perf_counter() - started:.0f} s")
        print("Tampering (each on a fresh copy; `wf gate check --all` must not pass):")
        caught = try_edits(bases, TAMPERING, work, harmful=True)
        print("Harmless edits (each on a fresh copy; `wf gate check --all` must still pass):")
        accepted = try_edits(bases, HARMLESS, work, harmful=False)
        print(f"tampering caught: {caught} / {len(TAMPERING)}; harmless edits accepted: {accepted} / {len(HARMLESS)}")
        if not args.skip_timing:
            print(f"Timing on a project with {args.files:,} data files:")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
            timing(args.keep or work, args.files)
    if caught != len(TAMPERING) or accepted != len(HARMLESS):
        sys.exit(1)


if __name__ == "__main__":
    main()
