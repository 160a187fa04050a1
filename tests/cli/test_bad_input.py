"""Bad input: one clear message naming the file and field or line, exit 2, no traceback, nothing lost."""

import pytest

from mlflow_core.workflow.scaffold import init_project


@pytest.fixture
def project(tmp_path):
    return init_project(tmp_path / "p").root


def _no_traceback(result):
    assert "Traceback" not in result.err + result.out


def test_misspelled_key_in_config(wf, project):
    config = project / "training_config.yaml"
    config.write_text(config.read_text().replace("  epochs: 15", "  epocs: 15"))
    before = config.read_text()
    r = wf("config", "validate", cwd=project)
    assert r.code == 2
    assert "training_config.yaml" in r.err and "training.epocs: unknown key; did you mean 'epochs'?" in r.err
    _no_traceback(r)
    r = wf("phase", "setup", cwd=project)  # a phase refuses to start on it and writes nothing
    assert r.code == 2 and "training.epocs" in r.err
    assert config.read_text() == before
    assert not (project / "runs").exists()


@pytest.mark.parametrize("args, fragment", [
    (["checklist", "tick", "reproducibility", "seeds_fixed"], "`wf phase setup` records it"),
    (["checklist", "tick", "reproducibility", "no_such_item"], "no item with id 'no_such_item'"),
    (["checklist", "show", "../../etc/passwd"], "not a valid name"),
    (["checklist", "show", "nonexistent"], "checklist not found"),
    (["checklist", "show", "post_baselin"], "Did you mean 'post_baseline'?"),
    # an item's id where the checklist's name goes: the command that was meant
    (["checklist", "tick", "data_documented"], "`wf checklist tick reproducibility data_documented`"),
    (["checklist", "tick", "reproducibility"], "its manual items: data_documented, config_committed"),
    (["gate", "check", "nonsense"], "unknown phase 'nonsense'"),
    (["decide", "finalize"], "nothing to decide yet"),
    (["decide", "maybe"], "unknown decision 'maybe'"),
    (["phase", "nonsense"], "unknown phase 'nonsense'"),
    (["diagnose", "astrology"], "unknown diagnostic 'astrology'"),
    (["phase", "basline"], "unknown phase 'basline'; phases are: setup, baseline, diagnostics, optimization, "
                           "finalization. Did you mean 'baseline'?"),
    (["decide", "finalise"], "Did you mean 'finalize'?"),
    (["diagnose", "nan_los"], "Did you mean 'nan_loss'?"),
    (["diagnose", "dead_relu"], "no training run is recorded yet"),
    (["diagnose", "nan_loss"], "no training run is recorded yet"),
    (["diagnose", "nan_loss", "--run", "../../etc"], "is not a valid name"),
    (["diagnose", "nan_loss", "--run", "nope"], "no run 'nope'"),
    (["report", "baseline"], "has recorded no run yet"),
])
def test_bad_requests(wf, project, args, fragment):
    r = wf(*args, cwd=project)
    assert r.code == 2, r
    assert fragment in r.err
    _no_traceback(r)


def test_checklist_without_id_names_line(wf, project):
    path = project / "checklists" / "reproducibility.md"
    path.write_text(path.read_text() + "- [ ] an item someone added without an id\n")
    r = wf("gate", "check", "setup", cwd=project)
    assert r.code == 2 and "reproducibility.md" in r.err and "task item has no id" in r.err
    assert "line 18" in r.err


def test_unknown_auto_check(wf, project):
    path = project / "checklists" / "post_baseline.md"
    path.write_text(path.read_text() + "- [ ] magic <!-- id: magic; auto: does_magic -->\n")
    r = wf("gate", "check", "baseline", cwd=project)
    assert r.code == 2 and "unknown auto check 'does_magic'" in r.err


def test_corrupted_state_is_not_overwritten(wf, project):
    state = project / ".wf" / "state.json"
    state.write_text('{"schema_version": 1, "runs": [')
    for args in (["status"], ["checklist", "tick", "reproducibility", "data_documented"], ["phase", "setup"]):
        r = wf(*args, cwd=project)
        assert r.code == 2 and "state.json" in r.err and "not valid JSON" in r.err
        _no_traceback(r)
    assert state.read_text() == '{"schema_version": 1, "runs": ['


def test_outside_a_project(wf, tmp_path):
    r = wf("status", cwd=tmp_path)
    assert r.code == 2 and "not inside a wf project" in r.err and "wf init" in r.err


def test_a_refused_phase_prints_the_error_alone(wf, project):
    """The progress display starts once the phase does: a refusal is the error, not a blank line first."""
    for args in (["phase", "basline"], ["phase", "baseline"]):
        r = wf(*args, cwd=project)
        assert r.code in (2, 3) and r.out == "" and r.err.startswith("error: ")


@pytest.mark.parametrize("text, fragment", [
    ("", "the file is empty (no sections)"),
    ("# only a comment\n", "the file is empty (no sections)"),
    (None, "line {appended}, column 1: not valid YAML (duplicate key 'training', also on line {first}"),
])
def test_empty_config_and_duplicate_keys_are_refused(wf, project, text, fragment):
    config = project / "training_config.yaml"
    if text is None:  # a second training section appended: the later one would silently win
        lines = config.read_text().splitlines()
        fragment = fragment.format(appended=len(lines) + 1, first=lines.index("training:") + 1)
        text = config.read_text() + "training:\n  epochs: 3\n"
    config.write_text(text)
    r = wf("config", "validate", cwd=project)
    assert r.code == 2 and "training_config.yaml" in r.err and fragment in r.err
    _no_traceback(r)
    assert config.read_text() == text


def test_a_scalar_where_a_section_goes_says_what_to_write(wf, project):
    config = project / "training_config.yaml"
    lines = config.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  scheduler:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    config.write_text("\n".join([*lines[:start], "  scheduler: cosine", *lines[end:]]) + "\n")
    r = wf("config", "validate", cwd=project)
    assert r.code == 2 and "training.scheduler: a section with keys below it is expected, got 'cosine'; " \
        "write e.g. `scheduler: {name: cosine}`" in r.err


def test_init_inside_a_project_is_refused(wf, project):
    r = wf("init", "nested", cwd=project / "checklists")
    assert r.code == 2 and f"is inside the wf project {project.resolve()}" in r.err
    assert not (project / "checklists" / "nested").exists()


def test_init_never_overwrites(wf, project):
    r = wf("init", str(project), cwd=project.parent)
    assert r.code == 2 and "already a wf project" in r.err


def test_missing_dataset_folder(wf, project):
    config = project / "training_config.yaml"
    text = config.read_text().replace("source: digits", "source: npz").replace("path: null", "path: data/none")
    config.write_text(text)
    r = wf("phase", "setup", cwd=project)
    assert r.code == 2 and "training_config.yaml: data.path = 'data/none'" in " ".join(r.err.split())
    _no_traceback(r)


def test_gate_check_exit_codes_and_junit(wf, project, tmp_path):
    r = wf("gate", "check", "setup", "--junit", str(tmp_path / "gate.xml"), cwd=project)
    assert r.code == 1
    xml = (tmp_path / "gate.xml").read_text()
    assert 'tests="8" failures="8"' in xml and "<failure" in xml


def test_gate_check_warn_only_reports_what_does_not_hold_and_exits_0(wf, project, tmp_path):
    """For a team adopting the gates: the same findings, as JUnit skips and a markdown summary, exit 0."""
    r = wf("gate", "check", "setup", "--warn-only", "--junit", str(tmp_path / "gate.xml"), cwd=project)
    assert r.code == 0 and "--warn-only: exit 0 although a gate does not hold." in r.out
    assert "The setup gate is closed (8 items left)." in r.out
    xml = (tmp_path / "gate.xml").read_text()
    assert 'tests="8" failures="0" skipped="8"' in xml and "<failure" not in xml and 'message="warn-only: ' in xml
    md = wf("gate", "check", "--all", "--markdown", "--warn-only", cwd=project)
    assert md.code == 0
    assert md.out.startswith("## wf gates\n\n| Gate | Verdict | Items | Changed since verified |")
    assert "| `setup` | ❌ closed | 0/8 | — |" in md.out and "### `setup`: what does not hold" in md.out
    assert "_Reported with `--warn-only`: the job passes although a gate does not hold._" in md.out
    assert wf("gate", "check", "--all", "--markdown", cwd=project).code == 1
    both = wf("gate", "check", "--json", "--markdown", cwd=project)
    assert both.code == 2 and "give --json or --markdown, not both" in both.err


def test_help_documents_exit_codes(wf):
    r = wf("--help")
    assert r.code == 0 and "3 the entry gate is closed" in r.out
    r = wf("phase", "--help")
    assert r.code == 0 and "4 another wf command holds the project" in " ".join(r.out.split())


@pytest.mark.parametrize("text, seconds", [("8h30m", 30600), ("45m", 2700), ("90s", 90), ("1h", 3600),
                                           ("2:30:00", 9000), ("3600", 3600), ("1.5h", 5400), ("1h 5m", 3900)])
def test_time_limit_durations(text, seconds):
    from mlflow_core.orchestration.phase_modes import parse_duration

    assert parse_duration(text, "--time-limit") == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "1:75:00", "h", "-5m"])
def test_time_limit_durations_that_are_not(text):
    from mlflow_core.errors import UserInputError
    from mlflow_core.orchestration.phase_modes import parse_duration

    with pytest.raises(UserInputError, match="not a duration"):
        parse_duration(text, "--time-limit")
