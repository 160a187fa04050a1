"""Several workers on one study in a real PostgreSQL server: `wf phase optimization --worker` twice
at once, then `wf phase optimization` once. The study holds exactly n_trials trials, none run twice,
and the comparison and report are written once."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import configure

pytest.importorskip("optuna")
pytest.importorskip("psycopg")

WF = [sys.executable, "-m", "mlflow_core"]
OVERRIDE = ["--override-gate", "tests: 1-epoch trials"]


def _pg_bin():
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    return versions[-1] if versions else None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a free local port (trust authentication, data in /tmp)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        if os.environ.get("WF_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed, and WF_REQUIRE_POSTGRES is set (.ci/run installs it)")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="wf-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(base, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    run = lambda *args: subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=120)  # noqa: E731
    init = run(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
    assert init.returncode == 0, init.stderr
    start = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start")
    assert start.returncode == 0, start.stderr + (base / "log").read_text()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_and_the_final_step_share_one_study(wf, project_copy, postgres, mlflow_store_template):
    """…and one MLflow store, a SQLite file both workers write at once: not corrupted, and every
    trial nested under the final step's run once it gathers the study."""
    shutil.copy(mlflow_store_template, project_copy / "mlflow.db")
    configure(project_copy, [("optimization.n_trials", "4"), ("optimization.trial_epochs", "1"),
                             ("optimization.seeds", "2"), ("training.epochs", "1"), ("monitoring.mlflow", "true"),
                             ("optimization.lr_find", "false"), ("optimization.storage", f'"{postgres}"')])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0
    assert wf("decide", "optimize", "--reason", "a shared sweep", cwd=project_copy).code == 0
    workers = [subprocess.Popen([*WF, "phase", "optimization", "--worker", *OVERRIDE], cwd=project_copy,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = [int(out.split("Worker ran ")[1].split(" ")[0]) for out in outputs]
    assert sum(ran) == 4, outputs
    assert all("the study holds 4 of 4" in out for out in outputs[-1:])
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    assert not [r for r in state["runs"] if r["phase"] == "optimization"]  # workers record nothing

    r = wf("phase", "optimization", *OVERRIDE, cwd=project_copy)
    assert r.code in (0, 1), r.err + r.out[-2000:]
    facts = json.loads((project_copy / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    numbers = [t["number"] for t in facts["trials"]]
    assert sorted(numbers) == [0, 1, 2, 3]  # exactly n_trials, none twice
    assert facts["study"]["storage"] == postgres.replace("postgres@", "postgres:***@")
    assert len({t["run_dir"] for t in facts["trials"]}) == 4
    assert all((project_copy / t["run_dir"] / "logs" / "metrics.json").is_file() for t in facts["trials"])
    assert ": 4 of 4 trials run or running" in r.out and "Trial 4" not in r.out  # the final step ran none
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    assert len([r for r in state["runs"] if r["phase"] == "optimization"]) == 1
    assert (project_copy / "reports" / "optimization_results.md").is_file()
    import sqlite3

    from mlflow.tracking import MlflowClient

    with sqlite3.connect(project_copy / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = MlflowClient(tracking_uri=f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("q").experiment_id], max_results=100)
    parent = next(x.info.run_id for x in runs if x.data.tags.get("wf.phase") == "optimization"
                  and "wf.kind" not in x.data.tags)
    trials = [x for x in runs if x.data.tags.get("wf.kind") == "trial"]
    assert len(trials) == 4 and {x.data.tags.get("mlflow.parentRunId") for x in trials} == {parent}, (
        "\n".join(outputs) + r.out + r.err)
    assert all(x.info.status == "FINISHED" for x in trials)

