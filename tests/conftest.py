from __future__ import annotations

import os

# Under pytest-xdist every core runs a worker, each with torch's usual thread pool (the thread count
# decides the order of float reductions, which the bit-identical comparisons rely on): waiting
# threads sleep instead of spinning, so that the workers' pools do not fight over the cores. Set
# before anything imports torch. pytest-xdist also hands its workers COLUMNS, which rich reads once,
# when wf's consoles are made: without it they follow the `wf` fixture's COLUMNS as in a plain run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # and each worker (with the wf processes its tests start, which inherit this) its share of the
    # cores, as wf's launcher gives its ranks: two pools of every core on two cores only contend
    from mlflow_core.orchestration.launch import rank_threads  # torch-free

    os.environ.update(rank_threads(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlflow_core.cli import main

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def wf(capsys, monkeypatch):
    """Run `wf ARGS…` in-process in `cwd`, returning exit code and output."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """One quickstart run per session (real digits training); tests copy it before changing it."""
    root = tmp_path_factory.mktemp("session") / "q"
    cwd = os.getcwd()
    try:
        os.chdir(root.parent)
        try:
            main(["quickstart", "q"])
        except SystemExit as exc:
            assert exc.code in (0, None), f"quickstart failed with {exc.code}"
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def project_copy(trained_project, tmp_path) -> Path:
    dest = tmp_path / "q"
    shutil.copytree(trained_project, dest)
    return dest


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema migrated, once per session: a test copies it into its
    project as mlflow.db (0.1 s) instead of migrating a new one (seconds)."""
    pytest.importorskip("mlflow")
    from mlflow_core.monitoring.mlflow_store import Store

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    store = Store(f"sqlite:///{path}", "template", None)
    assert store.ok, "the MLflow store could not be created"
    return path
