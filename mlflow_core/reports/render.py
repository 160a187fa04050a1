"""Render a report template to a file atomically and return its record (path, sha256)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from mlflow_core.atomic import atomic_write_text
from mlflow_core.content import content_dirs, packaged_root
from mlflow_core.errors import UserInputError
from mlflow_core.workflow.evidence import file_sha256
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.units import metric_value, percent, plain, shows_percent


def plus_minus(mean: Any, std: Any, percent: bool = False) -> str:
    """`mean ± std` with the std to two significant digits and the mean to the same decimal place
    (0.9958 ± 0.0020, not 0.9958 ± 0.001969 or 1 ± 0): no digit shown that the spread makes noise.
    `percent`: a fraction shown in % (accuracies, as everywhere in the reports)."""
    if not isinstance(mean, (int, float)) or not math.isfinite(mean):
        return plain(mean)
    scale, unit = (100.0, " %") if percent else (1.0, "")
    mean = mean * scale
    if not isinstance(std, (int, float)) or not math.isfinite(std):
        return f"{plain(float(mean))} ± —{unit}"
    std = std * scale
    if std == 0:
        return f"{mean:.{2 if percent else 4}f} ± 0{unit}"
    decimals = max(0, 1 - math.floor(math.log10(abs(std))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}{unit}"


def _mark(passed: bool) -> str:
    return "✅" if passed else "❌"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


MAX_RENDER_S = 20.0  # a report template renders in milliseconds; one that runs longer is a loop gone wild
MAX_OUTPUT_CHARS = 5_000_000  # a report a person reads in a pull request (GitHub shows 1 MB of a file)
MAX_ARGUMENT = MAX_OUTPUT_CHARS  # no filter argument (a width, a count) larger than a report


class TemplateBudgetExceeded(Exception):
    """A render past its time or output budget."""


class TemplateOutsideFolders(jinja2.TemplateNotFound):
    """A template whose file, its links resolved, lies outside the template folders."""

    def __init__(self, name: str, filename: str):
        super().__init__(name, f"{name} is a link to a file outside the template folders (or in a template folder "
                               "that is a link out of the project)")
        self.filename = filename


class ConfinedLoader(jinja2.FileSystemLoader):
    """FileSystemLoader serving only files that, links resolved, lie inside a template folder; a
    project's folder must itself resolve inside the project. A pull request may add a template that
    is a link to any file of the machine that renders it: that file must never reach a report."""

    def __init__(self, folders: list[Path], project_root: Path | None):
        super().__init__([str(f) for f in folders])
        packaged = packaged_root().resolve()
        project = project_root.resolve() if project_root is not None else None
        self.allowed = [f.resolve() for f in folders if f.resolve().is_relative_to(packaged)
                        or (project is not None and f.resolve().is_relative_to(project))]

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        source, filename, uptodate = super().get_source(environment, template)
        if not any(Path(filename).resolve().is_relative_to(folder) for folder in self.allowed):
            raise TemplateOutsideFolders(template, filename)
        return source, filename, uptodate


class BudgetedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The sandbox with a budget: every call a template makes (a range, a method) checks the clock,
    repetition (`*`) and powers are bounded before they are computed, and no filter is given an
    argument larger than a report. The output's size is counted as it is generated (render_text)."""
    intercepted_binops = frozenset({"*", "**"})
    deadline = float("inf")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.check_clock()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.check_clock()
        if operator == "*":
            for items, times in ((left, right), (right, left)):
                if isinstance(items, (str, list, tuple)) and isinstance(times, int) and len(items) * times > MAX_OUTPUT_CHARS:
                    raise TemplateBudgetExceeded(f"a repetition of {len(items)} × {times} is larger than a report")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64 and isinstance(left, int) \
                and abs(left) > 1:
            raise TemplateBudgetExceeded(f"{left} ** {right} is larger than a report shows")
        return super().call_binop(context, operator, left, right)

    def check_clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBudgetExceeded(f"rendering took longer than {MAX_RENDER_S:.0f} s")

    def render_text(self, template: str, context: dict[str, Any]) -> str:
        """`template` rendered within the budget: MAX_RENDER_S seconds, MAX_OUTPUT_CHARS characters."""
        self.deadline = time.monotonic() + MAX_RENDER_S
        pieces, size = [], 0
        try:
            for piece in self.get_template(template).generate(**context):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateBudgetExceeded(f"the report grew past {MAX_OUTPUT_CHARS:,} characters")
                self.check_clock()
                pieces.append(piece)
        finally:
            self.deadline = float("inf")
        return "".join(pieces)


def _bounded(name: str, fn: Any) -> Any:
    """A filter that refuses an argument (after the value it filters) larger than a report. Jinja's
    pass_context / pass_environment mark travels with it: Jinja then passes its context first."""
    passed = 1 + hasattr(fn, "jinja_pass_arg")  # the value filtered, and the context Jinja passes before it

    def bounded(*args: Any, **kwargs: Any) -> Any:
        for arg in (*args[passed:], *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_ARGUMENT:
                raise TemplateBudgetExceeded(f"the filter {name} was given {arg}, more than a report holds")
        return fn(*args, **kwargs)

    if hasattr(fn, "jinja_pass_arg"):
        bounded.jinja_pass_arg = fn.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


def environment(project_root: Path | None) -> BudgetedSandbox:
    """The templates' environment: a project's own templates first, then the packaged ones. Sandboxed:
    a project's template is text a pull request may change, and rendering it must never run code
    (no attribute that starts with an underscore, no object that changes what it was given), read a
    file outside the template folders, or run without end; while formatting values as every packaged
    template does."""
    folders = [d / "reports" for d in content_dirs("templates", project_root)]
    env = BudgetedSandbox(
        loader=ConfinedLoader(folders, project_root), undefined=jinja2.StrictUndefined, autoescape=False,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=plain, pct=percent, mark=_mark, duration=_duration, pm=plus_minus, metric=metric_value)
    env.filters = {name: _bounded(name, fn) for name, fn in env.filters.items()}
    env.tests.update(percent=shows_percent)
    return env


def has_template(project_root: Path | None, template: str) -> bool:
    """Whether the packaged templates (or the project's own) hold `template`."""
    try:
        environment(project_root).get_template(template)
    except TemplateOutsideFolders as exc:
        raise UserInputError(f"{_template_file(project_root, template)}: {exc.message}: a template is never read "
                             "from outside the template folders",
                             hint="replace the link with the template's own text") from None
    except jinja2.TemplateNotFound:
        return False
    return True


def render(project_root: Path | None, template: str, context: dict[str, Any]) -> str:
    """`template` rendered with `context`. Whatever a project's template does wrong (bad syntax, a
    missing or outside file, code, an error of its own expressions, a render past its budget) is bad
    input naming the template and its line; an error in wf's own templates stays wf's bug."""
    env = environment(project_root)
    try:
        return env.render_text(template, context)
    except jinja2.sandbox.SecurityError as exc:
        where = _template_file(project_root, template)
        raise UserInputError(f"{where}: the template reaches outside what a report may show ({exc}); a report "
                             "template formats the values it is given, it runs no code",
                             hint="remove that expression, or delete the project's copy to use wf's own "
                                  "template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserInputError(f"{_shown(project_root, exc.filename)}: line {exc.lineno}: template syntax error: "
                             f"{exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        where = _position(exc, project_root) or _template_file(project_root, template)
        what = exc.message if isinstance(exc, TemplateOutsideFolders) else f"no template {exc.name!r} in the template folders"
        raise UserInputError(f"{where}: {what}; nothing was written",
                             hint="a template includes only templates of templates/reports/ (the project's or "
                                  "wf's own)") from None
    except jinja2.UndefinedError as exc:
        raise UserInputError(f"{_position(exc, project_root) or f'report template {template}'}: {exc.message}") from None
    except TemplateBudgetExceeded as exc:
        where = _position(exc, project_root) or _template_file(project_root, template)
        raise UserInputError(f"{where}: {exc}; nothing was written", hint="a report template formats the values "
                             "it is given: bound its loops and repetitions") from None
    except (Exception, RecursionError) as exc:  # the template's own expressions: 1/0, a bad format, a loop in macros
        where = _position(exc, project_root, own_only=True)
        if where is None:
            raise
        raise UserInputError(f"{where}: {type(exc).__name__}: {str(exc)[:300]}; nothing was written") from None


def _position(exc: BaseException, project_root: Path | None, own_only: bool = False) -> str | None:
    """`file: line N` of the template frame an error came from (Jinja rewrites tracebacks so that
    template code shows as its template's lines); with `own_only`, only a project's own template."""
    found, tb = None, exc.__traceback__
    packaged = packaged_root().resolve()
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2") and not (own_only and Path(filename).resolve().is_relative_to(packaged)):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return f"{_shown(project_root, found[0])}: line {found[1]}" if found else None


def _shown(project_root: Path | None, filename: str | None) -> str:
    """A template file as a person sees it: relative to the project when it is the project's."""
    if not filename:
        return "a report template"
    try:
        return Path(filename).relative_to(project_root).as_posix() if project_root else filename
    except ValueError:
        return filename


def _template_file(project_root: Path | None, template: str) -> str:
    """The file a template name resolves to, as the person sees it (the project's own copy first)."""
    for folder in content_dirs("templates", project_root):
        if (folder / "reports" / template).is_file():
            path = folder / "reports" / template
            try:
                return path.relative_to(project_root).as_posix() if project_root else str(path)
            except ValueError:
                return str(path)
    return f"report template {template}"


def write_report(project: Project, filename: str, template: str, context: dict[str, Any]) -> dict[str, str]:
    text = render(project.root, template, context)
    if not text.endswith("\n"):
        text += "\n"
    path = project.reports_dir / filename
    copy_cited_playbooks(project, text)
    atomic_write_text(path, text)
    return {"path": project.relative(path), "sha256": file_sha256(path)}


PLAYBOOK_LINK = re.compile(r"\(\.\./diagnostics/([a-z0-9_]+)\.md\)")


def copy_cited_playbooks(project: Project, text: str) -> list[str]:
    """The playbooks a report links to (`../diagnostics/NAME.md`), copied into the project's
    diagnostics/ where it has none, so that the link works in the pull request; a project's own
    (edited) playbook is never replaced."""
    copied = []
    for name in sorted(set(PLAYBOOK_LINK.findall(text))):
        packaged = packaged_root() / "diagnostics" / f"{name}.md"
        target = project.root / "diagnostics" / f"{name}.md"
        if packaged.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, packaged.read_text(encoding="utf-8"))
            copied.append(name)
    return copied
