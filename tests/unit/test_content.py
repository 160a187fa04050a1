"""Content is data and is tested as data: every phase, checklist and playbook loads, and every
reference between them resolves."""

from pathlib import Path

import pytest
import yaml

from mlflow_core.content import packaged_root
from mlflow_core.workflow.checklist import parse_checklist
from mlflow_core.workflow.checks import CHECKS
from mlflow_core.workflow.phases import PHASE_ORDER, load_phase

ROOT = packaged_root()


@pytest.mark.parametrize("name", PHASE_ORDER)
def test_phase_definitions_resolve(name):
    phase = load_phase(name)
    assert phase.name == name and phase.number == PHASE_ORDER.index(name) + 1
    assert (ROOT / "checklists" / f"{phase.exit_checklist}.md").is_file()
    assert set(phase.next) <= set(PHASE_ORDER)
    for criterion in phase.success_criteria:
        assert criterion.check in CHECKS, criterion.check
    for playbook in phase.playbooks.values():
        assert (ROOT / "diagnostics" / f"{playbook}.md").is_file(), playbook


def test_state_machine_shape():
    nexts = {p: load_phase(p).next for p in PHASE_ORDER}
    assert nexts == {"setup": ["baseline"], "baseline": ["finalization", "diagnostics", "optimization"],
                     "diagnostics": ["baseline", "optimization"], "optimization": ["finalization"],
                     "finalization": []}


@pytest.mark.parametrize("path", sorted((ROOT / "checklists").glob("*.md")), ids=lambda p: p.name)
def test_checklists_parse_and_name_known_checks(path):
    checklist = parse_checklist(path, known_checks=set(CHECKS))
    assert checklist.items


def test_post_baseline_has_seed_003_items():
    items = {i.id: i for i in parse_checklist(ROOT / "checklists" / "post_baseline.md").items}
    for required in ("training_completed", "best_checkpoint_saved", "report_generated",
                     "gpu_utilization_documented", "decision_made"):
        assert items[required].auto


@pytest.mark.parametrize("path", sorted((ROOT / "templates" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_config_templates_validate(path):
    from mlflow_core.config import load_config
    load_config(path)


def test_playbooks_name_cause_ids():
    text = (ROOT / "diagnostics" / "nan_loss.md").read_text()
    for cause in ("lr_too_high", "nonfinite_inputs", "amp_overflow", "unstable_op"):
        assert f"`{cause}`" in text


def test_phase_files_are_plain_yaml():
    for path in (ROOT / "phases").glob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_every_diagnostic_has_a_playbook_naming_its_causes():
    import importlib
    import re

    from mlflow_core.diagnostics import DIAGNOSTICS
    for name in DIAGNOSTICS:
        path = ROOT / "diagnostics" / f"{name}.md"
        assert path.is_file(), name
    modules = [importlib.import_module(f"mlflow_core.diagnostics.{name}") for name in DIAGNOSTICS]
    sources = "".join(Path(m.__file__).read_text() for m in modules)
    causes = set(re.findall(r'Finding\(\s*"(\w+)",\s*"(\w+)"', sources))
    assert len(causes) >= 20
    assert {d for d, _ in causes} == set(DIAGNOSTICS)
    for diagnostic, cause in causes:
        assert f"`{cause}`" in (ROOT / "diagnostics" / f"{diagnostic}.md").read_text(), (diagnostic, cause)


@pytest.mark.parametrize("name", PHASE_ORDER)
def test_exit_items_for_name_real_items_and_phases(name):
    phase = load_phase(name)
    ids = {i.id for i in parse_checklist(ROOT / "checklists" / f"{phase.exit_checklist}.md").items}
    for target, items in phase.exit_items_for.items():
        assert target in phase.next
        assert set(items) <= ids, (target, set(items) - ids)


def test_the_gate_knows_every_cause_a_fix_trial_can_verify():
    from mlflow_core.diagnostics.fixes import LR_TRIALS
    from mlflow_core.workflow.checks import CONFIG_FIXABLE

    assert set(LR_TRIALS) | {"unnormalized_inputs", "amp_overflow"} == CONFIG_FIXABLE


def test_a_report_brings_the_playbooks_it_links_to_into_the_project(tmp_path):
    """`[nan_loss](../diagnostics/nan_loss.md)` must work in the project's pull request: the cited
    playbook is copied where the project has none, and a project's own edited copy is kept."""
    from mlflow_core.reports.render import copy_cited_playbooks
    from mlflow_core.workflow.scaffold import init_project

    project = init_project(tmp_path / "p")
    own = project.root / "diagnostics" / "overfitting.md"
    own.parent.mkdir()
    own.write_text("our own thresholds\n")
    text = "See [nan_loss](../diagnostics/nan_loss.md) and [o](../diagnostics/overfitting.md), not diagnostics/x.md."
    assert copy_cited_playbooks(project, text) == ["nan_loss"]
    assert (project.root / "diagnostics" / "nan_loss.md").read_text().startswith("#")
    assert own.read_text() == "our own thresholds\n"


@pytest.mark.parametrize("mean, std, shown", [(0.99583, 0.001969, "0.9958 ± 0.0020"), (1.0, 0.0, "1.0000 ± 0"),
                                              (1234.5, 12.3, "1234 ± 12"), (0.5, 0.25, "0.50 ± 0.25"),
                                              (None, None, "—")])
def test_plus_minus_shows_the_digits_the_spread_allows(mean, std, shown):
    from mlflow_core.reports.render import plus_minus
    assert plus_minus(mean, std) == shown


def test_accuracy_spreads_are_in_percent_like_every_accuracy_in_the_reports():
    from mlflow_core.reports.render import plus_minus
    assert plus_minus(0.99583, 0.001969, True) == "99.58 ± 0.20 %"
    assert plus_minus(0.9832, 0.0, True) == "98.32 ± 0 %"


def test_the_diagnostics_catalog_names_every_diagnostic_module_and_only_those():
    """`wf diagnose --help` and argument checks read the catalog without importing a module: a module
    declaring a diagnostic the catalog lacks would never run, a name without its module would fail."""
    import pkgutil

    import mlflow_core.diagnostics as package
    from mlflow_core.diagnostics.catalog import NAMES, SUMMARIES
    from mlflow_core.diagnostics.registry import REGISTRY

    declaring = {m.name for m in pkgutil.iter_modules(package.__path__)
                 if "DIAGNOSTIC = Diagnostic(" in (Path(package.__path__[0]) / f"{m.name}.py").read_text()}
    assert declaring == set(NAMES)
    assert all(REGISTRY[name].name == name and REGISTRY[name].summary == SUMMARIES[name] for name in NAMES)
