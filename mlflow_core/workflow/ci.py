"""`wf ci init`: a CI job that checks the gates on every push and pull request, written for the
project's repository. The job installs the bare package (no torch: gates read committed files
only), runs `wf gate check --all --junit gates.xml`, and publishes the verdict where the CI shows
it (GitHub: the job summary and the JUnit file as an artifact; GitLab: the merge request's test
report). On GitHub it runs on `pull_request` with a read-only token, so a pull request from a fork
can run it without access to secrets or write permissions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlflow_core import __version__
from mlflow_core.atomic import atomic_write_text
from mlflow_core.errors import UserInputError

CI_KINDS = ("github", "gitlab")


@dataclass(frozen=True)
class CiFile:
    path: Path
    text: str
    note: str  # what to do next, said after writing


def repository_root(project_root: Path) -> Path:
    """The enclosing git work tree (where CI files live), or the project itself outside git."""
    for folder in (project_root, *project_root.parents):
        if (folder / ".git").exists():
            return folder
    return project_root


def _working_directory(project_root: Path, repo: Path) -> str:
    rel = os.path.relpath(project_root, repo)
    return "." if rel == "." else Path(rel).as_posix()


def github_workflow(project_root: Path, install: str) -> CiFile:
    repo = repository_root(project_root)
    workdir = _working_directory(project_root, repo)
    text = f"""# wf gates: written by `wf ci init github` (wf {__version__}). Edit freely; `wf ci init github --force`
# writes it again. Runs on pull requests from forks too: the token is read-only and no secret is used.
name: wf gates

on:
  push:
    branches: [main, master]
  pull_request:

permissions:
  contents: read

jobs:
  gates:
    runs-on: ubuntu-latest
    defaults:
      run:
        working-directory: {workdir}
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - name: Install wf (the bare package, no torch; the gates read committed files only)
        run: python -m pip install "{install}"
      - name: Check every gate on the project's path
        run: wf gate check --all --junit gates.xml
      - name: Summary
        if: always()
        run: wf gate check --all --markdown --warn-only >> "$GITHUB_STEP_SUMMARY"
      - name: Keep the JUnit report
        if: always()
        uses: actions/upload-artifact@v4
        with:
          name: wf-gates
          path: {workdir}/gates.xml
"""
    path = repo / ".github" / "workflows" / "wf-gates.yml"
    return CiFile(path, text, "commit it; every push and pull request then shows each gate's verdict in the "
                              "job summary")


def gitlab_job(project_root: Path, install: str) -> CiFile:
    repo = repository_root(project_root)
    workdir = _working_directory(project_root, repo)
    text = f"""# wf gates: written by `wf ci init gitlab` (wf {__version__}). Edit freely; `wf ci init gitlab --force`
# writes it again.
wf-gates:
  image: python:3.11-slim
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
  script:
    - cd {workdir}
    - python -m pip install "{install}"
    - wf gate check --all --junit gates.xml
  after_script:
    - cd {workdir} && wf gate check --all --markdown --warn-only || true
  artifacts:
    when: always
    paths:
      - {workdir}/gates.xml
    reports:
      junit: {workdir}/gates.xml
"""
    main = repo / ".gitlab-ci.yml"
    if not main.exists() or main.read_text(encoding="utf-8").startswith("# wf gates: written by `wf ci init gitlab`"):
        return CiFile(main, text, "commit it; merge requests then show each gate item as a test")
    own = repo / ".gitlab" / "wf-gates.gitlab-ci.yml"
    return CiFile(own, text, f"{main.name} exists and is yours: add `include: {{local: "
                             f"{own.relative_to(repo).as_posix()}}}` to it, then commit both")


def write_ci(project_root: Path, kind: str, install: str | None = None, force: bool = False) -> CiFile:
    if kind not in CI_KINDS:
        raise UserInputError(f"unknown CI {kind!r}; choose one of: {', '.join(CI_KINDS)}.")
    spec = install or f"wf=={__version__}"
    if any(c in spec for c in "\"\n`$"):
        raise UserInputError(f"--install {spec!r}: a pip requirement has no quotes, backticks, $ or newlines")
    ci = github_workflow(project_root, spec) if kind == "github" else gitlab_job(project_root, spec)
    if ci.path.exists() and not force and ci.path.read_text(encoding="utf-8") != ci.text:
        raise UserInputError(f"{ci.path}: exists; your edits are kept.",
                             hint=f"`wf ci init {kind} --force` writes it again.")
    ci.path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ci.path, ci.text)
    return ci
