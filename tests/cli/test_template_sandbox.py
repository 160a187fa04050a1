"""A project's report templates are text a pull request may change: whatever they hold, rendering
them reads no file outside the template folders, runs within a budget, and any mistake is exit 2
naming the template and its line, with the report as it was."""

from __future__ import annotations

import pytest

CASES = {  # case -> (the template's second line, fragment of the message)
    "include_outside": ('{% include "../../../etc/passwd" %}', "no template '../../../etc/passwd'"),
    "include_missing": ('{% include "nope.md.j2" %}', "no template 'nope.md.j2'"),
    "division_by_zero": ("{{ 1/0 }}", "ZeroDivisionError"),
    "huge_repetition": ('{{ "x" * 100000000 }}', "larger than a report"),
    "huge_power": ("{{ 10 ** 100000000 }}", "larger than a report"),
    "huge_filter_width": ('{{ "x"|center(1000000000) }}', "the filter center was given 1000000000"),
    "output_flood": ('{% for a in range(100000) %}{% for b in range(100) %}xxxxxxxxxx{% endfor %}{% endfor %}',
                     "grew past"),
    "endless_recursion": ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "RecursionError"),
    "undefined_name": ("{{ no_such_value.x }}", "no_such_value"),
    "syntax": ("{% for %}", "template syntax error"),
}


@pytest.fixture
def own_template(project_copy):
    folder = project_copy / "templates" / "reports"
    folder.mkdir(parents=True)
    return folder / "baseline_results.md.j2"


def _refused(wf, project, fragment, line=True):
    report = project / "reports" / "baseline_results.md"
    before = report.read_bytes()
    r = wf("report", "baseline", cwd=project)
    message = " ".join(r.err.split())
    assert r.code == 2, r.out + r.err
    assert "templates/reports/baseline_results.md.j2" + (": line 2" if line else "") in message, message
    assert fragment in message and "Traceback" not in r.err + r.out, message
    assert report.read_bytes() == before
    return message


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_template_is_exit_2_naming_the_template_and_line(wf, project_copy, own_template, case):
    line, fragment = CASES[case]
    own_template.write_text(f"# Baseline\n{line}\n")
    _refused(wf, project_copy, fragment, line=case != "output_flood")  # the whole report's size: no one line


def test_a_loop_without_end_is_stopped_by_the_time_budget(wf, project_copy, own_template, monkeypatch):
    import mlflow_core.reports.render as render

    monkeypatch.setattr(render, "MAX_RENDER_S", 1.0)  # the same budget, reached sooner
    own_template.write_text("# Baseline\n{% for a in range(100000) %}{% for b in range(100000) %}"
                            "{% endfor %}{% endfor %}\n")
    _refused(wf, project_copy, "rendering took longer than 1 s")


def test_a_template_that_links_out_of_the_project_never_reaches_the_report(wf, project_copy, own_template, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the maintainer's private key\n")
    (own_template.parent / "leak.md.j2").symlink_to(secret)
    own_template.write_text('# Baseline\n{% include "leak.md.j2" %}\n')
    message = _refused(wf, project_copy, "leak.md.j2 is a link to a file outside the template folders")
    assert "private key" not in message
    # the template itself a link, and a template folder that is a link out of the project
    own_template.unlink()
    own_template.symlink_to(secret)
    r = wf("report", "baseline", cwd=project_copy)
    assert r.code == 2 and "outside the template folders" in r.err and "private key" not in r.out + r.err
    assert "private key" not in (project_copy / "reports" / "baseline_results.md").read_text()


def test_a_template_folder_linked_out_of_the_project_is_refused(wf, project_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "baseline_results.md.j2").write_text("# Baseline\nthe maintainer's private notes\n")
    (project_copy / "templates").mkdir()
    (project_copy / "templates" / "reports").symlink_to(elsewhere)
    r = wf("report", "baseline", cwd=project_copy)
    assert r.code == 2 and "outside the template folders" in r.err
    assert "private notes" not in (project_copy / "reports" / "baseline_results.md").read_text()
