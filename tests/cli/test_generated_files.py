"""What wf writes for other tools is checked by those tools: the CI files by actionlint and the
workflow schemas, the JUnit file by junitparser and a JUnit XSD, the reports and the summary by
GitHub's renderer. A project's report templates render in a sandbox, and the commands CI runs on a
pull request never import the project's Python code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlflow_core.workflow.scaffold import init_project
from tests.helpers import configure
from tests.reference_tools import actionlint, assert_renders_on_github, assert_reports_render_on_github

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _check_jsonschema(schema: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, paths)],
                          capture_output=True, text=True)


def test_the_github_workflow_passes_actionlint_and_the_workflow_schema(wf, tmp_path):
    (tmp_path / ".git").mkdir()
    project = init_project(tmp_path / "models" / "p").root
    assert wf("ci", "init", "github", cwd=project).code == 0
    flow = tmp_path / ".github" / "workflows" / "wf-gates.yml"
    assert actionlint(flow) == []
    checked = _check_jsonschema("vendor.github-workflows", flow)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the Node 24 majors of GitHub's own actions, and pip's downloads cached on the file's install line
    steps = [s for s in yaml.safe_load(flow.read_text())["jobs"]["gates"]["steps"] if "uses" in s]
    assert [s["uses"] for s in steps] == ["actions/checkout@v6", "actions/setup-python@v6", "actions/upload-artifact@v7"]
    assert steps[1]["with"]["cache"] == "pip"
    assert steps[1]["with"]["cache-dependency-path"] == ".github/workflows/wf-gates.yml"
    # the linters can fail: a mistyped key is found by both
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.write_text(flow.read_text().replace("runs-on:", "runs_on:"))
    assert any("runs_on" in finding for finding in actionlint(broken))
    assert _check_jsonschema("vendor.github-workflows", broken).returncode == 1


def test_the_verify_jobs_pass_actionlint_and_the_schemas(wf, tmp_path):
    (tmp_path / ".git").mkdir()
    project = init_project(tmp_path / "models" / "p").root
    assert wf("ci", "init", "github", "--verify", "--runner-label", "gpu-box", cwd=project).code == 0
    flow = tmp_path / ".github" / "workflows" / "wf-gates.yml"
    text = flow.read_text()
    assert "runs-on: [self-hosted, gpu-box]" in text and "wf verify --all" in text and 'wf-phases[train]' in text
    assert "head.repo.full_name == github.repository" in text  # never a fork's code on the team's runner
    # a custom label is the one thing actionlint asks to have declared (.github/actionlint.yaml)
    assert [f.rsplit("[", 1)[1] for f in actionlint(flow)] == ["runner-label]"]
    assert wf("ci", "init", "github", "--verify", "--runner-label", "linux", "--force", cwd=project).code == 0
    assert actionlint(flow) == []
    checked = _check_jsonschema("vendor.github-workflows", flow)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert wf("ci", "init", "gitlab", "--verify", cwd=project).code == 0
    job = tmp_path / ".gitlab-ci.yml"
    assert "wf-verify:" in job.read_text() and "tags: [wf-verify]" in job.read_text()
    checked = _check_jsonschema("vendor.gitlab-ci", job)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    r = wf("ci", "init", "gitlab", "--verify", "--runner-label", "a b", "--force", cwd=project)
    assert r.code == 2 and "--runner-label 'a b'" in r.err


def test_the_gitlab_jobs_validate_against_gitlab_ci_schema(wf, tmp_path):
    (tmp_path / ".git").mkdir()
    project = init_project(tmp_path / "p").root
    assert wf("ci", "init", "gitlab", cwd=project).code == 0
    own = tmp_path / ".gitlab-ci.yml"
    checked = _check_jsonschema("vendor.gitlab-ci", own)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    own.write_text("stages: [test]\nunit:\n  stage: test\n  script: [pytest]\n")  # the team's own pipeline
    assert wf("ci", "init", "gitlab", cwd=project).code == 0
    included = tmp_path / ".gitlab" / "wf-gates.gitlab-ci.yml"
    checked = _check_jsonschema("vendor.gitlab-ci", included)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_junit_file_parses_and_validates_against_a_junit_schema(wf, project_copy, tmp_path):
    junitparser = pytest.importorskip("junitparser")
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(FIXTURES / "junit.xsd")
    checklist = project_copy / "checklists" / "post_baseline.md"
    text = checklist.read_text()
    checklist.write_text(text.replace("<!-- id: results_reviewed -->", "& <more> \"quoted\" <!-- id: results_reviewed -->"))
    for flags in ((), ("--warn-only",)):
        out = tmp_path / f"gates{len(flags)}.xml"
        r = wf("gate", "check", "--all", "--junit", str(out), *flags, cwd=project_copy)
        assert r.code == (0 if flags else 1), r.err
        schema.validate(str(out))
        suites = list(junitparser.JUnitXml.fromfile(str(out)))
        assert [s.name for s in suites] == ["wf gate setup", "wf gate baseline"]
        baseline = suites[1]
        cases = {case.name.split(":")[0]: case for case in baseline}
        assert baseline.tests == len(cases) and baseline.errors == 0
        reviewed = cases["results_reviewed"]
        assert '& <more> "quoted"' in reviewed.name
        outcome = type(reviewed.result[0]).__name__
        assert outcome == ("Skipped" if flags else "Failure"), outcome
        assert baseline.failures == (0 if flags else sum(not c.is_passed and not c.is_skipped for c in baseline))


def test_reports_and_the_summary_render_on_github_with_whole_tables_and_working_links(wf, project_copy, tmp_path):
    assert set(assert_reports_render_on_github(project_copy)) >= {"environment.md", "setup_report.md",
                                                                   "baseline_results.md"}
    summary = project_copy / "summary.md"
    assert wf("report", "summary", "--output", str(summary), cwd=project_copy).code == 0
    assert_renders_on_github(summary, project_copy)
    # the check can fail: a row with a cell too many, and a figure that is not there
    broken = project_copy / "reports" / "broken.md"
    broken.write_text("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n\n![loss](figures/none.png)\n")
    with pytest.raises(AssertionError) as exc:
        assert_renders_on_github(broken, project_copy)
    assert "broken.md:3: 3 cells under a header of 2" in str(exc.value)
    assert "image to a missing file: figures/none.png" in str(exc.value)


def test_a_project_template_cannot_run_code(wf, project_copy):
    """A report template is text a pull request may change: rendering it runs nothing."""
    marker = project_copy / "PWNED"
    own = project_copy / "templates" / "reports"
    own.mkdir(parents=True)
    (own / "baseline_results.md.j2").write_text(
        "# Baseline\n{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}\n")
    report = project_copy / "reports" / "baseline_results.md"
    before = report.read_bytes()
    r = wf("report", "baseline", cwd=project_copy)
    assert r.code == 2, r.out + r.err
    message = " ".join(r.err.split())
    assert "templates/reports/baseline_results.md.j2: the template reaches outside what a report may show" in message
    assert "Traceback" not in r.err
    assert not marker.exists() and report.read_bytes() == before
    # formatting values stays possible: the project's template renders what it is given
    (own / "baseline_results.md.j2").write_text("# Baseline of {{ project_name }}\n{{ '%.3f' | format(3.14159) }}\n")
    assert wf("report", "baseline", cwd=project_copy).code == 0
    assert "3.142" in report.read_text()


PROBE = """
import sys
from mlflow_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("IMPORTED:" + ",".join(sorted(m for m in ("mymodel", "mydata") if m in sys.modules)), file=sys.stderr)
"""


def test_commands_ci_runs_on_a_pull_request_never_import_the_projects_code(tmp_path):
    project = init_project(tmp_path / "p").root
    marker = project / "IMPORTED"
    for module in ("mymodel", "mydata"):
        (project / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module}\\n')\n")
    configure(project, [("model.name", "custom"), ("model.target", "mymodel:Net"),
                        ("data.source", "custom"), ("data.target", "mydata:build")])
    for args in (["gate", "check", "--all"], ["gate", "check", "--all", "--markdown"], ["status"],
                 ["report", "summary"], ["checklist", "show", "reproducibility"]):
        out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=project, capture_output=True, text=True,
                             timeout=120)
        assert "IMPORTED:\n" in out.stderr or out.stderr.rstrip().endswith("IMPORTED:"), (args, out.stderr[-2000:])
        assert not marker.exists(), args
    shutil.rmtree(project)
