"""`wf ci init`: the generated CI files parse, run only commands wf has, and are safe for forks."""

import shlex

import pytest
import yaml

from mlflow_core.workflow.scaffold import init_project


def _wf_commands(lines):
    """The wf command lines a CI file runs (each `wf …` line, up to a shell operator)."""
    out = []
    for line in lines:
        for part in line.replace("&&", ";").replace("||", ";").replace(">>", ";").split(";"):
            words = shlex.split(part.strip()) if part.strip() else []
            if words and words[0] == "wf":
                out.append(words[1:])
    return out


def _exists(wf, args, cwd):
    """The command's words before its options name a wf command: its --help answers."""
    words = [a for a in args if not a.startswith("-")][:2]
    while words:
        r = wf(*words, "--help", cwd=cwd)
        if r.code == 0:
            return True
        words = words[:-1]
    return False


def test_a_github_workflow_for_a_project_in_a_subfolder_of_its_repository(wf, tmp_path):
    (tmp_path / ".git").mkdir()  # the repository; the project is one folder of it
    project = init_project(tmp_path / "models" / "p").root
    r = wf("ci", "init", "github", cwd=project)
    assert r.code == 0, r.err
    path = tmp_path / ".github" / "workflows" / "wf-gates.yml"
    assert f"wrote {path}" in " ".join(r.out.split())
    flow = yaml.safe_load(path.read_text())
    triggers = flow[True] if True in flow else flow["on"]  # YAML 1.1 reads the key `on` as true
    assert "pull_request" in triggers and "pull_request_target" not in triggers  # a fork gets no secrets
    assert flow["permissions"] == {"contents": "read"}
    job = flow["jobs"]["gates"]
    assert job["defaults"]["run"]["working-directory"] == "models/p"
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert 'python -m pip install "wf-phases' in runs[0] and "torch" not in runs[0]
    commands = _wf_commands(runs)
    assert ["gate", "check", "--all", "--junit", "gates.xml"] in commands
    assert all(_exists(wf, c, project) for c in commands)
    # the job's own command works on the project: a JUnit file, exit 1 while setup has not run
    assert wf("gate", "check", "--all", "--junit", str(project / "gates.xml"), cwd=project).code == 1
    assert (project / "gates.xml").read_text().startswith("<?xml")

    path.write_text(path.read_text() + "# my edit\n")
    again = wf("ci", "init", "github", cwd=project)
    assert again.code == 2 and f"{path}: exists; your edits are kept." in " ".join(again.err.split())
    assert "--force" in again.err and path.read_text().endswith("# my edit\n")
    assert wf("ci", "init", "github", "--force", "--install", "git+https://example.org/wf.git", cwd=project).code == 0
    assert 'pip install "git+https://example.org/wf.git"' in path.read_text()


def test_a_gitlab_job_next_to_a_pipeline_of_ones_own(wf, tmp_path):
    project = init_project(tmp_path / "p").root
    r = wf("ci", "init", "gitlab", cwd=project)
    assert r.code == 0
    job = yaml.safe_load((project / ".gitlab-ci.yml").read_text())["wf-gates"]
    assert job["artifacts"]["reports"]["junit"] == "./gates.xml"
    assert all(_exists(wf, c, project) for c in _wf_commands(job["script"] + job["after_script"]))
    (project / ".gitlab-ci.yml").write_text("stages: [test]\n")  # the team's own pipeline
    r = wf("ci", "init", "gitlab", cwd=project)
    assert r.code == 0 and "include: {local: .gitlab/wf-gates.gitlab-ci.yml}" in " ".join(r.out.split())
    assert (project / ".gitlab-ci.yml").read_text() == "stages: [test]\n"
    assert "wf-gates" in yaml.safe_load((project / ".gitlab" / "wf-gates.gitlab-ci.yml").read_text())


def test_ci_init_refuses_an_unknown_ci_and_a_quoted_requirement(wf, tmp_path):
    project = init_project(tmp_path / "p").root
    r = wf("ci", "init", "jenkins", cwd=project)
    assert r.code == 2 and "unknown CI 'jenkins'; choose one of: github, gitlab." in r.err
    r = wf("ci", "init", "github", "--install", 'wf"; rm -rf /', cwd=project)
    assert r.code == 2 and "a pip requirement has no quotes" in r.err
    assert not (project / ".github").exists()


def test_the_job_installs_this_wf_never_a_strangers_package_of_the_same_name(tmp_path):
    """"wf" on the package index is another project's: the job installs the checkout this wf runs from,
    at its commit, and the step runs in a fresh virtualenv from a clean clone of the repository."""
    import subprocess
    import venv

    from mlflow_core.workflow.ci import _with_train, default_install

    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    project = init_project(tmp_path / "repo" / "p").root
    spec = default_install(project)
    assert spec.requirement.startswith("wf-phases @ git+") or spec.requirement.startswith("wf-phases==")
    assert not spec.requirement.startswith("wf==") and "wf-phases[train]" in _with_train(spec.requirement)
    if not spec.requirement.startswith("wf-phases @ git+"):
        pytest.skip("this wf is not running from a git checkout")
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", spec.requirement], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shown = subprocess.run([str(env / "bin" / "wf"), "--version"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("wf ")
    assert "torch" not in subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True).stdout
