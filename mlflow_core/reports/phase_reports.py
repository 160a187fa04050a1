"""Build each phase's report from recorded files (evidence, metrics.json, state): no torch, so
`wf report PHASE` can render it again anywhere."""

from __future__ import annotations

import json
from typing import Any

from mlflow_core.reports.plots import learning_curves
from mlflow_core.reports.render import write_report
from mlflow_core.workflow.phases import PhaseDefinition
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.recommend import Recommendation, recommend
from mlflow_core.workflow.state import ProjectState, now_iso


def render_phase_report(project: Project, state: ProjectState, definition: PhaseDefinition, run_id: str,
                        facts: dict[str, Any], criteria: list[dict[str, Any]], project_name: str,
                        ) -> tuple[dict[str, str], Recommendation | None]:
    overrides = [e.model_dump(mode="json") for e in state.overrides()]
    if definition.name == "setup":
        ok = all(c["passed"] for c in criteria)
        next_step = ("Tick the manual items of `checklists/reproducibility.md` (`wf checklist show "
                     "reproducibility`), then run `wf phase baseline`." if ok else
                     "Fix the ❌ items above and run `wf phase setup` again.")
        context = {"project_name": project_name, "run_id": run_id, "recorded_at": now_iso(), "facts": facts,
                   "criteria": criteria, "overrides": overrides, "next_step": next_step}
        return write_report(project, definition.report, "setup_report.md.j2", context), None
    if definition.name == "diagnostics":
        from mlflow_core.diagnostics.engine import write_diagnosis_report
        run = state.run(facts["diagnosed_run"])
        return write_diagnosis_report(project, facts["diagnosis"], project.inside(run.dir)), None
    if definition.name == "optimization":
        from mlflow_core.config.loader import load_config
        from mlflow_core.reports.plots import optimization_figures
        figures, note = optimization_figures(facts, project.reports_dir / "figures")
        context = {"project_name": project_name, "run_id": run_id, "f": facts, "criteria": criteria,
                   "figures": figures, "figures_note": note, "overrides": overrides,
                   "configured_lr": load_config(project.config_path).training.learning_rate}
        return write_report(project, definition.report, "optimization_results.md.j2", context), None
    metrics = json.loads((project.root / facts["metrics"]["path"]).read_text(encoding="utf-8"))
    rec = recommend(metrics, criteria, definition.playbooks)
    figures, note = learning_curves(metrics, project.reports_dir / "figures", definition.name)
    checkpoints = [(n, metrics["checkpoints"][n]) for n in ("best", "last") if metrics["checkpoints"].get(n)]
    checkpoints += [(f"epoch {c['epoch']}", c) for c in metrics["checkpoints"]["periodic"]]
    epochs = metrics["epochs"]
    rec_view = {"verdict": rec.verdict, "next_phase": rec.next_phase, "command": rec.command,
                "reason": rec.reason, "playbook": rec.playbook,
                # reports/ sits one level below the project root, where diagnostics/ lives
                "playbook_link": f"../{rec.playbook}" if rec.playbook else None}
    context = {"project_name": project_name, "m": metrics, "criteria": criteria, "rec": rec_view,
               "last": epochs[-1] if epochs else None, "figures": figures, "figures_note": note,
               "checkpoints": checkpoints, "run_dir": facts["run_dir"], "overrides": overrides,
               "data_wait": facts.get("data_wait_fraction")}
    return write_report(project, definition.report, "baseline_results.md.j2", context), rec
