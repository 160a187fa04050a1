"""`wf gate check`: exit 0 when the gate passes, 1 when it does not. No torch, no GPU, no checkpoints:
it reads committed files only, so CI can run it on a bare install."""

from __future__ import annotations

from pathlib import Path

import typer

from mlflow_core.atomic import atomic_write_text
from mlflow_core.cli.output import console, print_gate, print_json

app = typer.Typer(help="Check a phase's gate (its exit checklist) against recorded evidence.", no_args_is_help=True)


@app.command()
def check(phase: str = typer.Argument(None, help="Phase whose gate to check (default: the current phase)."),
          check_all: bool = typer.Option(False, "--all", help="Every gate on the project's path to where it "
                                         "stands (setup → … → the current phase), and every other phase with "
                                         "recorded evidence or a finished run: what CI should run."),
          as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
          junit: Path = typer.Option(None, "--junit", help="Also write a JUnit XML report here (for CI)."),
          markdown: bool = typer.Option(False, "--markdown", help="Print the verdict as a markdown summary "
                                        "(for CI: >> \"$GITHUB_STEP_SUMMARY\")."),
          warn_only: bool = typer.Option(False, "--warn-only", help="Report what does not hold (JUnit: skipped, "
                                         "not failed) and exit 0: for a team adopting the gates."),
          ) -> None:
    """Exit 0 when the gate (with --all: every gate on the path) passes and 1 when it does not. A gate
    passes when each of its items holds and nothing it verified (config, data, code, packages) has
    changed since; waived items and overrides on record are shown."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.workflow.gates import chain_verdicts, evaluate_gate
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.provenance import on_record
    from mlflow_core.workflow.state import load_state

    if check_all and phase:
        raise UserInputError("give a phase or --all, not both")
    if as_json and markdown:
        raise UserInputError("give --json or --markdown, not both")
    project = Project.find()
    state = load_state(project)
    verdicts = (chain_verdicts(project, state) if check_all
                else [evaluate_gate(project, state, phase or state.current_phase or "setup")])
    passed = all(v.passed for v in verdicts)
    records = on_record(project, state)
    if junit is not None:
        if junit.is_dir():
            raise UserInputError(f"--junit {junit}: is a directory; give a file name")
        atomic_write_text(junit, junit_xml(verdicts, warn_only))
    if markdown:
        print(markdown_summary(verdicts, warn_only, records), end="")
    elif as_json:
        shown = {"passed": passed, "gates": [v.to_json() for v in verdicts]} if check_all else verdicts[0].to_json()
        print_json({**shown, "on_record": [r.to_json() for r in records]})
    else:
        for index, verdict in enumerate(verdicts):
            print_gate(verdict, records if index == len(verdicts) - 1 else ())
        if check_all:
            closed = [v.phase for v in verdicts if not v.passed]
            console.print(f"Every gate on the path ({' → '.join(v.phase for v in verdicts)}) "
                          + ("[green]holds[/]." if passed else f"[red]does not hold[/]: {', '.join(closed)}."))
        if warn_only and not passed:
            console.print("[yellow]--warn-only[/]: exit 0 although a gate does not hold.")
    raise typer.Exit(0 if passed or warn_only else 1)


def markdown_summary(verdicts, warn_only: bool = False, records=()) -> str:
    """The gates as a markdown summary for a CI job's page: a line per gate, then what does not hold."""
    lines = ["## wf gates", "", "| Gate | Verdict | Items | Changed since verified |", "|---|---|---|---|"]
    for v in verdicts:
        done = sum(i.checked for i in v.items)
        verdict = "✅ passes" if v.passed else ("⚠️ re-opened" if v.drift else "❌ closed")
        lines.append(f"| `{v.phase}` | {verdict} | {done}/{len(v.items)} | {len(v.drift) or '—'} |")
    for v in verdicts:
        if v.passed:
            continue
        lines += ["", f"### `{v.phase}`: what does not hold"]
        lines += [f"- `{i.id}` {i.text}: {i.evidence}" for i in v.open_items]
        lines += [f"- changed since verified ({d.kind}): {d.detail}" for d in v.drift]
        if v.drift:
            lines.append(f"- to verify again: {v.rerun()}")
    if records:
        lines += ["", "### Waivers and overrides on record", "", "| Kind | What | Who | Reason |", "|---|---|---|---|"]
        lines += [f"| {r.kind} | {_cell(r.where)} | {_cell(r.shown())} | {_cell(r.reason)} |" for r in records]
    if warn_only and not all(v.passed for v in verdicts):
        lines += ["", "_Reported with `--warn-only`: the job passes although a gate does not hold._"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def junit_xml(verdicts, warn_only: bool = False) -> str:
    from xml.sax.saxutils import escape, quoteattr  # only for --junit: keeps `gate check` fast

    suites = []
    for verdict in verdicts:
        cases = []
        for item in verdict.items:
            name = quoteattr(f"{item.id}: {item.text}")
            if item.waived:
                body = f'<skipped message={quoteattr(item.evidence)}/>'
            elif not item.checked and warn_only:
                body = f'<skipped message={quoteattr("warn-only: " + item.evidence)}/>'
            elif not item.checked:
                body = f'<failure message={quoteattr(item.evidence)}>{escape(item.evidence)}</failure>'
            else:
                body = ""
            cases.append(f'    <testcase classname="wf.gate.{verdict.phase}" name={name}>{body}</testcase>')
        for drift in verdict.drift:
            message = quoteattr(drift.detail)
            body = (f'<skipped message={quoteattr("warn-only: " + drift.detail)}/>' if warn_only else
                    f'<failure message={message}>{escape(drift.detail)}</failure>')
            cases.append(f'    <testcase classname="wf.gate.{verdict.phase}" name="unchanged {drift.kind}">'
                         f'{body}</testcase>')
        failing = sum(not i.checked for i in verdict.items) + len(verdict.drift)
        failures = 0 if warn_only else failing
        skipped = sum(bool(i.waived) for i in verdict.items) + (failing if warn_only else 0)
        suites.append(f'  <testsuite name="wf gate {verdict.phase}" tests="{len(cases)}" failures="{failures}" '
                      f'skipped="{skipped}" errors="0">\n' + "\n".join(cases) + "\n  </testsuite>")
    return '<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n' + "\n".join(suites) + "\n</testsuites>\n"
