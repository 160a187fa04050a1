"""`reports/diagnosis_<name>.md`: a diagnosis (its JSON form, as evidence records it) with the run's
curves and the evidence each finding rests on. No torch: `wf report diagnostics` renders it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow_core.reports.plots import diagnosis_figures
from mlflow_core.reports.render import has_template, write_report
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.records import load_run_metrics


def read_run_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json, checked against RunMetrics, in its JSON form (what templates read)."""
    return load_run_metrics(run_dir / "logs" / "metrics.json").to_json()


def write_diagnosis_report(project: Project, diagnosis: dict[str, Any], run_dir: Path,
                           next_step: str | None = None) -> dict[str, str]:
    """Render `reports/diagnosis_<name>.md` from a diagnosis (its JSON form) and the run's files;
    `next_step`: what the phase's outcome leads to (Phase 3's report)."""
    figures, note = diagnosis_figures(diagnosis, run_dir, project.reports_dir / "figures")
    name = diagnosis["diagnostic"]
    # the probes of the diagnostics that found something (or of the one asked for), each shown by its
    # own section template, templates/reports/diagnostics/<name>.md.j2, where it has one
    wanted = {f["diagnostic"] for f in diagnosis["findings"]} | ({name} if name != "auto" else set())
    recorded = {name: diagnosis["probes"]} if name != "auto" else diagnosis["probes"]
    probes = {k: recorded.get(k) or {} for k in recorded
              if k in wanted and has_template(project.root, f"diagnostics/{k}.md.j2")}
    context = {"d": diagnosis, "metrics": read_run_metrics(run_dir), "figures": figures, "figures_note": note,
               "measured": measured(diagnosis),
               "dyn": probes,
               "playbook_link": f"../diagnostics/{diagnosis['diagnostic']}.md", "next_step": next_step}
    return write_report(project, f"diagnosis_{diagnosis['diagnostic']}.md", "diagnosis.md.j2", context)



MEASURES_SHOWN = 8  # a probe's figures listed one by one up to this many


def measured(diagnosis: dict[str, Any]) -> list[dict[str, str]]:
    """What each diagnostic measured (its scalar probes), for a diagnosis with no finding: a reader
    sees how far each figure was from its threshold, not only that nothing fired."""
    name = diagnosis["diagnostic"]
    by_diagnostic = diagnosis["probes"] if name == "auto" else {name: diagnosis["probes"]}
    rows = []
    for diagnostic, probes in by_diagnostic.items():
        for measure, value in (probes or {}).items() if isinstance(probes, dict) else ():
            if isinstance(value, dict) and len(value) > MEASURES_SHOWN:  # e.g. a count per class
                rows.append({"diagnostic": diagnostic, "measure": measure, "value": f"({len(value)} values)"})
            elif isinstance(value, dict):  # one level down: a probe's own figures (symptoms, throughput)
                rows += [{"diagnostic": diagnostic, "measure": f"{measure}.{k}", "value": _shown(v)}
                         for k, v in value.items() if _scalar(v)]
            elif _scalar(value):
                rows.append({"diagnostic": diagnostic, "measure": measure, "value": _shown(value)})
    return rows


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value).replace("|", "\\|")
