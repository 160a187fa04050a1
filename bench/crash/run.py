"""kill -9 at random moments of a digits baseline, each followed by `wf phase baseline --resume`.

One uninterrupted baseline is the reference. Then a fresh project's baseline is killed with SIGKILL
after a random delay (from its start-up, before torch is imported, to its end), every file wf wrote
is checked (state.json validates, every checkpoint loads with weights_only, metrics.json parses),
`wf status` must show the killed run interrupted (never `running`), a run that logged a resume step
must have a resume point, and the run is resumed; that repeats until the run completes. The resume
interval (7) is not a multiple of the check window (10) by default. Prints the kills, the resumes
that completed, the corrupt files and the runs shown running (goal 0 each) and whether the final
weights equal the uninterrupted run's (goal: yes).

    python bench/crash/run.py [--kills 20] [--seed 0] [--resume-every 7] [--check-every 10]

With `--at-writes N` it aims instead: each file a baseline writes atomically (state, evidence,
checkpoints, resume points, reports, manifests) is killed at its first write and N-1 random later
ones, inside the write (bench/crash/at_write.py).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wf(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlflow_core", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def prepared_project(root: Path, name: str, resume_every: int, check_every: int) -> Path:
    from mlflow_core.workflow.scaffold import set_yaml_value

    assert wf("init", name, cwd=root).returncode == 0
    project = root / name
    config = project / "training_config.yaml"
    text = set_yaml_value(config.read_text(), "checkpointing.resume_every_n_steps", str(resume_every))
    config.write_text(set_yaml_value(text, "monitoring.check_every_n_steps", str(check_every)))
    assert wf("phase", "setup", cwd=project).returncode == 0
    wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=project)
    return project


def corrupt_files(project: Path) -> list[str]:
    """Every file wf writes that must stay whole: state, evidence, metrics, checkpoints."""
    from mlflow_core.errors import WfError
    from mlflow_core.training.checkpoint import load_checkpoint
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import load_state

    bad = []
    try:
        load_state(Project(project))
    except WfError as exc:
        bad.append(f".wf/state.json: {exc}")
    for path in list((project / ".wf" / "evidence").glob("*.json")) + list(project.glob("runs/*/logs/metrics.json")):
        try:
            json.loads(path.read_text())
        except ValueError as exc:
            bad.append(f"{path.relative_to(project)}: {exc}")
    for path in project.glob("runs/*/checkpoints/*.pt"):
        try:
            load_checkpoint(path)
        except WfError as exc:
            bad.append(f"{path.relative_to(project)}: {exc}")
    return bad


def last_weights(project: Path, run_dir: str):
    import torch
    return torch.load(project / run_dir / "checkpoints" / "last_model.pt", weights_only=True)["model"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume-every", type=int, default=7, help="checkpointing.resume_every_n_steps")
    parser.add_argument("--check-every", type=int, default=10, help="monitoring.check_every_n_steps")
    parser.add_argument("--at-writes", type=int, default=0, metavar="N",
                        help="instead of random moments: kill inside atomic writes, at the first and N-1 random "
                             "later writes of each file a baseline writes")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="wf-crash-"))
    import torch

    reference_project = prepared_project(root, "reference", args.resume_every, args.check_every)
    t0 = time.perf_counter()
    assert wf("phase", "baseline", cwd=reference_project).returncode == 0
    duration = time.perf_counter() - t0
    state = json.loads((reference_project / ".wf" / "state.json").read_text())
    reference = last_weights(reference_project, state["runs"][-1]["dir"])
    print(f"reference baseline: {duration:.1f} s (torch import included)")

    if args.at_writes:
        return at_writes(args, root, rng, reference)
    project = prepared_project(root, "crashed", args.resume_every, args.check_every)
    kills = mid_run = resumed_runs = identical_runs = completed_runs = shown_running = unresumable = 0
    corrupt: list[str] = []
    while kills < args.kills:  # one run after another, each killed at random until it completes
        command = ["phase", "baseline"]
        while True:
            proc = subprocess.Popen([sys.executable, "-m", "mlflow_core", *command], cwd=project,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            delay = rng.uniform(0.2, max(0.9 * duration, 3.0))  # start-up (before torch) included
            try:
                proc.wait(timeout=delay if kills < args.kills else None)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
                found = corrupt_files(project)
                corrupt += found
                run = json.loads((project / ".wf" / "state.json").read_text())["runs"][-1]
                mid_run += run["status"] == "running"
                shown = json.loads(wf("status", "--json", cwd=project).stdout or "{}").get("runs") or [{}]
                shown_running += shown[0].get("status") == "running"
                steps_csv = project / run["dir"] / "logs" / "steps.csv"
                logged = len(steps_csv.read_text().splitlines()) - 1 if steps_csv.is_file() else 0
                has_point = (project / run["dir"] / "checkpoints" / "resume.json").is_file()
                unresumable += run["status"] == "running" and logged >= args.resume_every and not has_point
                print(f"kill {kills} after {delay:.1f} s: run {run['run_id']} {run['status']} after {logged} logged "
                      f"steps, shown {shown[0].get('status')}, resume point {'yes' if has_point else 'no'}, "
                      f"{'corrupt: ' + '; '.join(found) if found else 'no corrupt file'}")
                # a run recorded before the kill continues (from step 0 if it had no resume point yet);
                # killed before its run was recorded, the baseline starts again
                command = ["phase", "baseline", "--resume"] if run["status"] == "running" else ["phase", "baseline"]
                continue
            if proc.returncode not in (0, 1, None):
                print(f"`wf {' '.join(command)}` exited {proc.returncode}")
                return 1
            break
        state = json.loads((project / ".wf" / "state.json").read_text())
        final = state["runs"][-1]
        same = all(torch.equal(reference[k], v) for k, v in last_weights(project, final["dir"]).items())
        resumed = any(e["event"] == "phase_resumed" and e.get("run_id") == final["run_id"] for e in state["history"])
        resumed_runs += resumed
        identical_runs += same
        completed_runs += 1
        print(f"  run {final['run_id']}: {final['status']}{', resumed' if resumed else ''}; "
              f"weights {'equal' if same else 'DIFFER from'} the uninterrupted run's")
    print(f"\nkills: {kills}, {mid_run} of them mid-run; runs completed after a resume: {resumed_runs}")
    print(f"corrupt files found: {len(corrupt)} (goal 0)")
    print(f"killed runs `wf status` showed running: {shown_running} (goal 0)")
    print(f"kills after {args.resume_every} logged steps with no resume point: {unresumable} (goal 0)")
    print(f"completed runs whose final weights equal the uninterrupted run's: {identical_runs} of {completed_runs} "
          "(goal: all)")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if not corrupt and not shown_running and not unresumable and identical_runs == completed_runs else 1


AT_WRITE = Path(__file__).with_name("at_write.py")


def at_writes(args: argparse.Namespace, root: Path, rng: random.Random, reference) -> int:
    """Kill a baseline inside its atomic writes, file by file: at the first write of each file and
    at random later ones, after the temp file is complete and before it replaces the old version.
    After each kill: no corrupt file, `wf status` shows no run running, `--resume` completes with the
    uninterrupted run's weights, and no temp file is left behind once it has."""
    import os

    import torch

    log = root / "writes.log"
    probe = prepared_project(root, "probe", args.resume_every, args.check_every)
    subprocess.run([sys.executable, str(AT_WRITE), "phase", "baseline"], cwd=probe, capture_output=True,
                   env={**os.environ, "WF_CRASH_LOG": str(log)}, check=True)
    counts: dict[str, int] = {}
    for name in log.read_text().splitlines():
        counts[name] = counts.get(name, 0) + 1
    print(f"a baseline's atomic writes: {sum(counts.values())}, to {len(counts)} files: "
          + ", ".join(f"{n} ×{c}" for n, c in sorted(counts.items())))
    failures = 0
    for name, count in sorted(counts.items()):
        picks = sorted({1, *rng.sample(range(2, count + 1), min(args.at_writes - 1, count - 1))})
        for at in picks:
            project = prepared_project(root, f"at-{len(list(root.iterdir()))}", args.resume_every, args.check_every)
            killed = subprocess.run([sys.executable, str(AT_WRITE), "phase", "baseline"], cwd=project,
                                    capture_output=True, text=True,
                                    env={**os.environ, "WF_CRASH_NAME": name, "WF_CRASH_AT": str(at)})
            if killed.returncode != -9:
                print(f"{name} write {at}: not reached (exit {killed.returncode}: "
                      f"{(killed.stdout + killed.stderr).strip().splitlines()[-1:]})")
                continue
            problems = corrupt_files(project)
            shown = json.loads(wf("status", "--json", cwd=project).stdout or "{}").get("runs") or [{}]
            if shown[0].get("status") == "running":
                problems.append("`wf status` shows the run running")
            runs = json.loads((project / ".wf" / "state.json").read_text())["runs"]
            recorded = runs and runs[-1]["phase"] == "baseline" and runs[-1]["status"] == "running"
            again = wf("phase", "baseline", *(["--resume"] if recorded else []), cwd=project)
            if again.returncode not in (0, 1):
                problems.append(f"the next baseline exited {again.returncode}: {again.stderr.strip()[-300:]}")
            else:
                final = json.loads((project / ".wf" / "state.json").read_text())["runs"][-1]
                if not all(torch.equal(reference[k], v) for k, v in last_weights(project, final["dir"]).items()):
                    problems.append("final weights differ from the uninterrupted run's")
            left = [str(p.relative_to(project)) for p in project.rglob("*.tmp")]
            if left:
                problems.append(f"temp files left: {', '.join(left[:3])}")
            failures += bool(problems)
            print(f"{name} write {at} of {count}: killed; "
                  f"{'continued with --resume' if recorded else 'run not recorded yet, started again'}; "
                  + ("; ".join(problems) if problems else "whole, resumed, weights equal, no temp file"))
            shutil.rmtree(project, ignore_errors=True)
    print(f"\nkills inside atomic writes with a problem: {failures} (goal 0)")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
