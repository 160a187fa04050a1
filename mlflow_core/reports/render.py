"""Render a report template to a file atomically and return its record (path, sha256)."""

from __future__ import annotations

import math
import re
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


def environment(project_root: Path | None) -> jinja2.Environment:
    """The templates' environment: a project's own templates first, then the packaged ones. Sandboxed:
    a project's template is text a pull request may change, and rendering it must never run code
    (no attribute that starts with an underscore, no object that changes what it was given), while
    formatting values as every packaged template does."""
    dirs = [str(d / "reports") for d in content_dirs("templates", project_root)]
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(dirs), undefined=jinja2.StrictUndefined, autoescape=False,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=plain, pct=percent, mark=_mark, duration=_duration, pm=plus_minus, metric=metric_value)
    env.tests.update(percent=shows_percent)
    return env


def has_template(project_root: Path | None, template: str) -> bool:
    """Whether the packaged templates (or the project's own) hold `template`."""
    try:
        environment(project_root).get_template(template)
    except jinja2.TemplateNotFound:
        return False
    return True


def render(project_root: Path | None, template: str, context: dict[str, Any]) -> str:
    try:
        return environment(project_root).get_template(template).render(**context)
    except jinja2.sandbox.SecurityError as exc:
        where = _template_file(project_root, template)
        raise UserInputError(f"{where}: the template reaches outside what a report may show ({exc}); a report "
                             "template formats the values it is given, it runs no code",
                             hint="remove that expression, or delete the project's copy to use wf's own "
                                  "template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserInputError(f"{exc.filename}: line {exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise UserInputError(f"report template {template}: {exc.message}") from None


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
