"""`wf ci init`: a CI job that checks the gates on every push and pull request, written for the
project's repository. The job installs the bare package (no torch: gates read committed files
only), runs `wf gate check --all --junit gates.xml`, and publishes the verdict where the CI shows
it (GitHub: the job summary and the JUnit file as an artifact; GitLab: the merge request's test
report). On GitHub it runs on `pull_request` with a read-only token, so a pull request from a fork
can run it without access to secrets or write permissions."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from mlflow_core import __version__
from mlflow_core.atomic import atomic_write_text
from mlflow_core.errors import UserInputError
from mlflow_core.workflow.git import git

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


# `--verify`: the job that recomputes the claims (`wf verify --all`). It needs the data and the run's
# files (git-ignored), so it runs on a runner of the team's own that has them under one folder, named by
# WF_ARTIFACTS in the runner's environment (the project's runs/ and its data folders as training_config.yaml names
# them, linked into the checkout), and the training stack. It runs the pull request's code on that
# machine, so on GitHub only for branches of the repository itself, never for forks.
VERIFY_LINK = ('for entry in "$WF_ARTIFACTS"/*; do [ -e "$(basename "$entry")" ] || ln -s "$entry" .; done')


def _github_verify_job(workdir: str, install: str, label: str) -> str:
    return f"""
  verify:
    # recomputes the claims: the data hashed again, the best checkpoint evaluated again, training segments
    # re-trained from the kept states. A runner of your own with the data: set WF_ARTIFACTS in the runner's
    # environment (its .env file) to the folder that holds the project's runs/ and data on that machine.
    # A custom label needs `self-hosted-runner: labels: [{label}]` in .github/actionlint.yaml for actionlint.
    if: github.event_name == 'push' || github.event.pull_request.head.repo.full_name == github.repository
    runs-on: [self-hosted, {label}]
    defaults:
      run:
        working-directory: {workdir}
    steps:
      - uses: actions/checkout@v6
      - name: Install wf with the training stack
        run: python -m pip install "{_with_train(install)}"
      - name: Link the runs and the data kept on this runner
        run: |
          test -n "$WF_ARTIFACTS" || {{ echo "set WF_ARTIFACTS in this runner's environment"; exit 2; }}
          {VERIFY_LINK}
      - name: Recompute every recorded claim
        run: wf verify --all
"""


def _with_train(install: str) -> str:
    """The requirement with the `train` extra (torch): verify trains and evaluates. A bare URL, or a
    requirement that names its extras, is the user's as it is."""
    if " @ " in install:
        name, url = install.split(" @ ", 1)
        return install if "[" in name else f"{name.strip()}[train] @ {url}"
    if install.startswith((".", "/")) and "[" not in install:
        return f"{install}[train]"
    if "://" in install or "[" in install or "@" in install:
        return install
    name, sep, version = install.partition("==")
    return f"{name}[train]{sep}{version}"


def github_workflow(project_root: Path, install: str, verify_label: str | None = None) -> CiFile:
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
      - uses: actions/checkout@v6
        with:
          fetch-depth: 0  # the whole history: who committed each waiver and override is shown
      - uses: actions/setup-python@v6
        with:
          python-version: "3.11"
          cache: pip  # pip's downloads kept between runs, keyed on this file (the install line below)
          cache-dependency-path: .github/workflows/wf-gates.yml
      - name: Install wf (the bare package, no torch; the gates read committed files only)
        run: python -m pip install "{install}"
      - name: Check every gate on the project's path
        run: wf gate check --all --junit gates.xml
      - name: Summary
        if: always()
        run: wf gate check --all --markdown --warn-only >> "$GITHUB_STEP_SUMMARY"
      - name: Keep the JUnit report
        if: always()
        uses: actions/upload-artifact@v7
        with:
          name: wf-gates
          path: {workdir}/gates.xml
""" + (_github_verify_job(workdir, install, verify_label) if verify_label else "")
    path = repo / ".github" / "workflows" / "wf-gates.yml"
    return CiFile(path, text, "commit it; every push and pull request then shows each gate's verdict in the "
                              "job summary")


def _gitlab_verify_job(workdir: str, install: str, label: str) -> str:
    return f"""
# recomputes the claims on a runner of your own with the data: set the CI/CD variable WF_ARTIFACTS to the
# folder that holds the project's runs/ and data on it.
wf-verify:
  tags: [{label}]
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
  script:
    - cd {workdir}
    - test -n "$WF_ARTIFACTS" || {{ echo "set the CI/CD variable WF_ARTIFACTS"; exit 2; }}
    - '{VERIFY_LINK}'
    - python -m pip install "{_with_train(install)}"
    - wf verify --all
"""


def gitlab_job(project_root: Path, install: str, verify_label: str | None = None) -> CiFile:
    repo = repository_root(project_root)
    workdir = _working_directory(project_root, repo)
    text = f"""# wf gates: written by `wf ci init gitlab` (wf {__version__}). Edit freely; `wf ci init gitlab --force`
# writes it again.
wf-gates:
  image: python:3.11-slim
  variables:
    GIT_DEPTH: "0"  # the whole history: who committed each waiver and override is shown
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
""" + (_gitlab_verify_job(workdir, install, verify_label) if verify_label else "")
    main = repo / ".gitlab-ci.yml"
    if not main.exists() or main.read_text(encoding="utf-8").startswith("# wf gates: written by `wf ci init gitlab`"):
        return CiFile(main, text, "commit it; merge requests then show each gate item as a test")
    own = repo / ".gitlab" / "wf-gates.gitlab-ci.yml"
    return CiFile(own, text, f"{main.name} exists and is yours: add `include: {{local: "
                             f"{own.relative_to(repo).as_posix()}}}` to it, then commit both")


DISTRIBUTION = "wf-phases"  # the name on the package index ("wf" there is another project's)


@dataclass(frozen=True)
class InstallSpec:
    requirement: str  # what the job's pip installs
    how: str  # where it comes from, said after writing


def default_install(project_root: Path) -> InstallSpec:
    """How the job gets this very wf, never a stranger's package of the same name: the git checkout
    this wf runs from (at its commit: its remote's URL, or a path inside the project's repository),
    else the distribution pinned to this version."""
    source = Path(__file__).resolve().parents[2]  # the checkout, when wf runs from one (an editable install)
    if not (source / "pyproject.toml").is_file() or not (source / "mlflow_core").is_dir():
        return InstallSpec(f"{DISTRIBUTION}=={__version__}", f"{DISTRIBUTION} {__version__} from your package index "
                           "(give --install for another source)")
    commit, remote = git(source, "rev-parse", "HEAD") or None, git(source, "remote", "get-url", "origin") or None
    if remote and ("://" not in remote or remote.startswith("file://")) and not _scp_like(remote):
        remote = None  # a clone of a folder on this machine: the checkout itself holds the commit
    repo = repository_root(project_root).resolve()
    if source == repo or repo in source.parents:  # wf is part of the project's repository
        relative = Path(os.path.relpath(source, repo)).as_posix()
        return InstallSpec(f"./{relative}" if relative != "." else ".",
                           f"the wf checkout in this repository ({relative})")
    if commit and remote:
        url = _pip_git_url(remote)
        return InstallSpec(f"{DISTRIBUTION} @ git+{url}@{commit}", f"{remote} at commit {commit[:12]}, the checkout "
                           "this wf runs from (push that commit, or give --install)")
    if commit:
        # file://localhost/…: PEP 508's URL form (packaging refuses file:/// behind `name @`); git takes both
        return InstallSpec(f"{DISTRIBUTION} @ git+file://localhost{source.as_posix()}@{commit}",
                           f"{source} at commit {commit[:12]}: a path of this machine, which a hosted runner does "
                           "not have; give --install with your repository's URL")
    return InstallSpec(f"{DISTRIBUTION}=={__version__}", f"{DISTRIBUTION} {__version__} from your package index "
                       f"({source} is not a git checkout; give --install for another source)")


def _scp_like(remote: str) -> bool:
    return "://" not in remote and ":" in remote and "@" in remote.split(":", 1)[0]


def _pip_git_url(remote: str) -> str:
    """A git remote as pip's git+ URL wants it: scp-like `git@host:org/repo.git` as ssh://."""
    if _scp_like(remote):
        user_host, path = remote.split(":", 1)
        return f"ssh://{user_host}/{path}"
    return remote


def write_ci(project_root: Path, kind: str, install: str | None = None, force: bool = False,
             verify_label: str | None = None) -> CiFile:
    if kind not in CI_KINDS:
        raise UserInputError(f"unknown CI {kind!r}; choose one of: {', '.join(CI_KINDS)}.")
    chosen = InstallSpec(install, "--install") if install else default_install(project_root)
    spec = chosen.requirement
    if any(c in spec for c in "\"\n`$"):
        raise UserInputError(f"--install {spec!r}: a pip requirement has no quotes, backticks, $ or newlines")
    if verify_label is not None and not verify_label.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserInputError(f"--runner-label {verify_label!r}: a runner label is letters, digits, '-', '_' and '.'")
    ci = (github_workflow(project_root, spec, verify_label) if kind == "github"
          else gitlab_job(project_root, spec, verify_label))
    if ci.path.exists() and not force and ci.path.read_text(encoding="utf-8") != ci.text:
        raise UserInputError(f"{ci.path}: exists; your edits are kept.",
                             hint=f"`wf ci init {kind} --force` writes it again.")
    ci.path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ci.path, ci.text)
    return dataclasses.replace(ci, note=f"{ci.note}. The job installs wf from {chosen.how}: `{spec}`")
