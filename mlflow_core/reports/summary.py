"""`wf report summary`: one markdown digest of the project for a pull request: the path through the
phases, each gate, the key figures with their spread, and links to the committed reports and
figures. No torch; nothing rendered anew, only what the evidence records.

Links: in a GitHub Actions job (GITHUB_SERVER_URL, GITHUB_REPOSITORY and GITHUB_SHA set) they
point at the files of that commit, which is what a comment on the pull request needs; elsewhere
they are relative to the project, for a summary committed or read next to it. No image is
uploaded anywhere: a figure is a link to its committed file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlflow_core.config import load_config
from mlflow_core.errors import UserInputError
from mlflow_core.reports.render import plus_minus
from mlflow_core.workflow.ci import repository_root
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.facts import (
    DiagnosticsFacts,
    FinalizationFacts,
    OptimizationFacts,
    SetupFacts,
    TrainingFacts,
)
from mlflow_core.workflow.gates import chain_verdicts
from mlflow_core.workflow.lock import held
from mlflow_core.workflow.phases import PHASE_ORDER, continue_command, load_phase
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.provenance import on_record
from mlflow_core.workflow.state import gone_runs, load_state
from mlflow_core.workflow.units import metric_value, shows_percent

SUMMARY_LIMIT = 64_000  # bytes: GitHub refuses comments over 65,536 characters
MARKER = "<!-- wf report summary -->"  # finds the comment to update (`wf report comment`)


def _linker(project: Project, blob_base: str | None) -> Any:
    """Links to the project's files: under `blob_base` (https://github.com/OWNER/REPO/blob/SHA/), or the
    Actions job's commit, or relative to the project."""
    server, repo, sha = (os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_SHA"))
    if blob_base is None and server and repo and sha:
        blob_base = f"{server}/{repo}/blob/{sha}/"
    if blob_base:
        prefix = Path(os.path.relpath(project.root, repository_root(project.root))).as_posix()
        base = blob_base + ("" if prefix == "." else prefix + "/")
        return lambda rel: f"[`{rel}`]({base}{rel})"
    return lambda rel: f"[`{rel}`]({rel})"


def project_summary(project: Project, blob_base: str | None = None) -> str:
    state = load_state(project)
    gone_runs(project, state, lock_held=held(project))  # shown as what they are: interrupted
    cfg = load_config(project.config_path)
    link = _linker(project, blob_base)
    verdicts = {v.phase: v for v in chain_verdicts(project, state)}
    lines = [MARKER, f"## wf · {cfg.project.name}", ""]
    path = []
    for name in PHASE_ORDER:
        verdict, title = verdicts.get(name), load_phase(name, project.root).title
        if verdict is None:
            continue
        mark = "✅" if verdict.passed else ("⚠️" if verdict.drift else "❌")
        done = sum(i.checked for i in verdict.items)
        path.append(f"{mark} {title} ({done}/{len(verdict.items)})")
    lines.append("**Path:** " + (" → ".join(path) if path else "no phase has run yet (`wf phase setup`)")
                 + (f" · now in **{state.current_phase}**" if state.current_phase else ""))
    for phase in PHASE_ORDER:  # each phase's latest decision, named after the phase it was made in
        d = state.decision_in(phase)
        if d is not None:
            reason, shortfall = getattr(d, "reason", None), getattr(d, "shortfall", None)
            lines.append(f"**Decision after {phase}:** {d.choice} → {d.next_phase}"
                         + (f" — {reason}" if reason else "")
                         + (f" · ⚠️ **below target:** {shortfall}" if shortfall else ""))
    released = latest_release(state)
    if released is not None:
        lines.append(f"**Released:** `{released['model']}` version {released['version']} as `@{released['alias']}` "
                     f"by {released['by']} at {released['time']}"
                     + (f" · ⚠️ **past closed gates** ({', '.join(released.get('gates_closed') or [])}): "
                        f"“{released['override']}”" if released.get("override") else ""))
    tracked = [(r.phase, r.mlflow_run_id, r.mlflow_uri) for r in state.runs if r.mlflow_run_id and r.finished_at]
    if tracked:
        from mlflow_core.monitoring.mlflow_store import ui_command

        lines.append("**MLflow:** " + " · ".join(f"{phase} `{run_id[:12]}`" for phase, run_id, _ in tracked[-5:])
                     + f"; browse with `{ui_command(tracked[-1][2], project.root)}`")
    lines += ["", "| Phase | Key figures | Report |", "|---|---|---|"]
    for name in PHASE_ORDER:
        evidence = read_evidence(project, name)
        latest = next((r for r in reversed(state.runs) if r.phase == name), None)
        stopped = latest is not None and latest.status in ("interrupted", "running") and (
            evidence is None or evidence.run_id != latest.run_id)
        if evidence is None and not stopped:
            continue
        cells = []
        if stopped:  # a later run that has no outcome yet: said before the figures of the one before it
            cells.append(f"⏸ run `{latest.run_id}` {latest.status}; continue with {continue_command(name)}")
        if evidence is not None:
            figures = (_figures(evidence.facts) if evidence.intact
                       else f"evidence not intact: {evidence.why_not_intact()}")
            cells.append(f"the run before it: {figures}" if stopped else figures)
        report = evidence.facts.report.path if evidence is not None and evidence.intact and evidence.facts.report \
            else None
        lines.append(f"| {name} | {'<br>'.join(cells)} | {link(report) if report else '—'} |")
    open_items = [(v.phase, i) for v in verdicts.values() for i in v.open_items]
    drift = [(v.phase, d) for v in verdicts.values() for d in v.drift]
    if open_items or drift:
        lines += ["", "### What does not hold"]
        lines += [f"- `{phase}` · `{i.id}`: {i.evidence}" for phase, i in open_items]
        lines += [f"- `{phase}` changed since verified ({d.kind}): {d.detail}" for phase, d in drift]
    records = on_record(project, state)
    if records:
        lines += ["", "### On the record", *(f"- {r.kind}: {r.where} {r.shown()} — {r.reason}" for r in records)]
    pictures = sorted(p.relative_to(project.root).as_posix() for p in (project.reports_dir / "figures").glob("*.png"))
    if pictures:
        lines += ["", "**Figures:** " + " · ".join(link(p) for p in pictures)]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > SUMMARY_LIMIT:
        cut = text.encode()[: SUMMARY_LIMIT - 200].decode(errors="ignore").rsplit("\n", 1)[0]
        text = cut + "\n\n_Cut at 64 KB: the full picture is in the reports linked above._\n"
    return text


def _figures(facts: Any) -> str:
    if isinstance(facts, SetupFacts):
        r, d = facts.reproducibility, facts.data
        out = (f"train {d.train_size:,} / val {d.val_size:,} samples, {d.num_classes} classes; two short runs "
               + ("bit-identical" if r.identical else f"within {r.max_abs_diff:.2g}") + f" on {r.device}")
        if facts.throughput:
            out += f"; {facts.throughput.bound}-bound (loader {facts.throughput.loader[facts.throughput.path]:,.0f}/s, " \
                   f"model {facts.throughput.model:,.0f}/s)"
        return out
    if isinstance(facts, TrainingFacts):
        if facts.best is None:
            return f"{facts.status}; no validated epoch"
        target = f" (target {metric_value(facts.target, facts.best.metric)})" if facts.target is not None else ""
        return (f"best {facts.best.metric} **{metric_value(facts.best.value, facts.best.metric)}** at epoch "
                f"{facts.best.epoch}{target}; {facts.epochs_completed} epochs, {facts.status}")
    if isinstance(facts, OptimizationFacts):
        c = facts.comparison
        if c is None:
            return "no trial completed"
        percent = shows_percent(c.metric)
        return (f"{c.metric}: baseline {plus_minus(c.baseline_mean, c.baseline_std, percent)}, optimized "
                f"{plus_minus(c.optimized_mean, c.optimized_std, percent)} over seeds {c.seeds}; "
                f"{'**better**' if c.significant else 'not better'} (p = {c.p_value:.3g})"
                if c.p_value is not None else c.verdict)
    if isinstance(facts, FinalizationFacts) and facts.summary:
        shown = []
        for key, label in (("accuracy", "test accuracy"), ("macro_f1", "macro F1"), ("mcc", "MCC"),
                           ("mean_iou", "mean IoU")):
            spread = facts.summary.get(key)
            if spread is not None:
                shown.append(f"{label} **{plus_minus(spread.mean, spread.std, key == 'accuracy')}**")
        return ", ".join(shown) + f" over {len(facts.evaluated())} model(s)"
    if isinstance(facts, DiagnosticsFacts):
        outcome, top = facts.concluded(), facts.top_finding()
        if outcome == "cause_found" and top is not None:
            fixed = f"; fix verified: {facts.verified_fix}" if facts.verified_fix else ""
            return f"cause found: **{top.cause}** ({top.diagnostic}, confidence {top.confidence:.2f}){fixed}"
        if outcome == "nothing_to_fix":
            return f"nothing to fix: run `{facts.diagnosed_run}` met its criteria and no diagnostic fired"
        likeliest = f"; likeliest: {top.cause} ({top.confidence:.2f})" if top is not None else ""
        return f"no cause stands out{likeliest}"
    status = getattr(facts, "status", None)
    return f"recorded{f' ({status})' if status else ''}"


def post_comment(project: Project) -> str:
    """The summary as one comment on the branch's pull request, through GitHub's CLI: the comment
    wf posted before (found by MARKER) is updated in place, so a pull request carries one."""
    import json
    import shutil
    import subprocess

    gh = shutil.which("gh")
    if gh is None:
        raise UserInputError("`wf report comment` posts through GitHub's CLI, `gh`, which is not installed here.",
                             hint="Install it (https://cli.github.com) and run `gh auth login`; or paste the "
                                  "output of `wf report summary` into the pull request.")

    def gh_run(*args: str, body: str | None = None) -> str:
        try:
            done = subprocess.run([gh, *args], cwd=project.root, capture_output=True, text=True, input=body,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            raise UserInputError(f"`gh {args[0]}` did not answer in 120 s.", hint="Check `gh auth status` and the "
                                 "network, then run `wf report comment` again.") from None
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserInputError(f"`gh {' '.join(args[:2])}` failed: {said}",
                                 hint="Check `gh auth status`, and that this branch has a pull request "
                                      "(`gh pr create`).")
        return done.stdout

    pr = json.loads(gh_run("pr", "view", "--json", "number,url,headRefOid"))
    owner_repo = pr["url"].split("/pull/")[0]
    text = project_summary(project, f"{owner_repo}/blob/{pr['headRefOid']}/")
    payload = json.dumps({"body": text})
    found = gh_run("api", f"repos/{{owner}}/{{repo}}/issues/{pr['number']}/comments", "--paginate",
                   "--jq", f'.[] | select(.body | startswith("{MARKER}")) | .id').split()
    if found:
        gh_run("api", "-X", "PATCH", f"repos/{{owner}}/{{repo}}/issues/comments/{found[0]}", "--input", "-",
               body=payload)
        return f"updated the summary comment on {pr['url']}"
    gh_run("api", "-X", "POST", f"repos/{{owner}}/{{repo}}/issues/{pr['number']}/comments", "--input", "-",
           body=payload)
    return f"posted the summary on {pr['url']}"


def latest_release(state: Any) -> dict[str, Any] | None:
    """The latest `wf release` on record."""
    event = next((e for e in reversed(state.history) if e.event == "release"), None)
    return None if event is None else event.model_dump(mode="json")
