"""Phase 3: diagnose the run that sent the project here (`wf diagnose auto` with fix trials)."""

from __future__ import annotations

from mlflow_core.diagnostics.engine import run_diagnosis, verified_fix
from mlflow_core.errors import UserInputError
from mlflow_core.runners import RunContext, RunOutput
from mlflow_core.workflow.facts import DiagnosticsFacts, judge_diagnosis
from mlflow_core.workflow.state import load_state


def run_diagnostics(ctx: RunContext) -> RunOutput:
    state = load_state(ctx.project)  # read only: the engine holds the lock
    run = state.latest_run("baseline", finished=True)
    if run is None or not (ctx.project.root / run.dir / "logs" / "metrics.json").is_file():
        raise UserInputError("no finished baseline run to diagnose.", hint="Run `wf phase baseline`.")
    ctx.on_message(f"Diagnosing {run.run_id}: every available diagnostic, with fix trials")
    diagnosis = run_diagnosis(ctx.project, "auto", run, fix=True, on_message=ctx.on_message)
    facts = DiagnosticsFacts(diagnosed_run=run.run_id, diagnosis=diagnosis.to_json(),
                             verified_fix=verified_fix(diagnosis), suggested_config=diagnosis.suggested_config,
                             diagnosed_run_passed=run.passed)
    facts.outcome = judge_diagnosis(facts.top_finding(), run.passed)
    if facts.outcome == "nothing_to_fix":
        ctx.on_message(f"Nothing to fix: {run.run_id} met its success criteria and no diagnostic found a problem")
    return RunOutput("completed", facts)
