"""How often a data-parallel command's processes end cleanly: `wf phase baseline --smoke` under plain
torchrun with 2 gloo ranks on the digits template, run N times, `--parallel` at once (load on the
machine is what exposes an exit race), each run's exit code and any "terminate called" counted.
With `--before COMMIT` the same runs from that version's source (a git worktree first on
PYTHONPATH), interleaved with the current one.

    python bench/ddp_exit.py --runs 200 [--parallel 2] [--before COMMIT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(source: Path, project: Path) -> tuple[int, bool]:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "mlflow_core", "phase", "baseline", "--smoke"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    return done.returncode, "terminate called" in done.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--before", help="an earlier commit to compare with")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wf-ddp-exit-"))
    sources = {"current": REPO}
    if args.before:
        sources["before"] = work / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(sources["before"]), args.before],
                       check=True, capture_output=True)
    try:
        sys.path.insert(0, str(REPO))
        from mlflow_core.workflow.scaffold import init_project
        from tests.helpers import configure

        projects = []
        for i in range(args.parallel * len(sources)):
            root = init_project(work / f"p{i}").root
            configure(root, [("training.epochs", "3"), ("early_stopping.enabled", "false")])
            projects.append(root)
        jobs = [(label, source) for _ in range(args.runs) for label, source in sources.items()]
        with ThreadPoolExecutor(args.parallel * len(sources)) as pool:
            results = list(pool.map(lambda ij: (ij[1][0], *one_run(ij[1][1], projects[ij[0] % len(projects)])),
                                    enumerate(jobs)))
        for label in sources:
            mine = [(code, aborted) for who, code, aborted in results if who == label]
            failed = sum(code != 0 for code, _ in mine)
            print(f"{label}: {len(mine)} runs, {failed} failed, {sum(a for _, a in mine)} with 'terminate called'")
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(sources["before"])],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
