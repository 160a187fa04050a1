"""Where content (phases, checklists, diagnostics, templates) comes from.

A project's own copy wins over the packaged one. The packaged copy lives in the wheel under
`mlflow_core/_content/`; in a source checkout (editable install) it is the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

from mlflow_core.errors import UserInputError

CONTENT_KINDS = ("phases", "checklists", "diagnostics", "templates")

_PACKAGE_DIR = Path(__file__).resolve().parent


def packaged_root() -> Path:
    """The folder holding the packaged content folders."""
    wheel_root = _PACKAGE_DIR / "_content"
    if (wheel_root / "phases").is_dir():
        return wheel_root
    source_root = _PACKAGE_DIR.parent
    if (source_root / "phases").is_dir():
        return source_root
    raise RuntimeError(f"wf's packaged content is missing (looked in {wheel_root} and {source_root})")


def content_path(kind: str, relative: str, project_root: Path | None = None) -> Path:
    """Resolve `kind/relative`, the project's copy first. Raises UserInputError if neither exists."""
    if kind not in CONTENT_KINDS:
        raise ValueError(f"unknown content kind {kind!r}")
    candidates = []
    if project_root is not None:
        candidates.append(project_root / kind / relative)
    candidates.append(packaged_root() / kind / relative)
    for candidate in candidates:
        if candidate.is_file():
            return candidate

    noun = {"checklists": "checklist", "phases": "phase definition", "templates": "template",
            "diagnostics": "playbook"}[kind]
    raise UserInputError(f"{candidates[0]}: {noun} not found (looked in {' and '.join(str(c.parent) for c in candidates)}).")


def content_dirs(kind: str, project_root: Path | None = None) -> list[Path]:
    """Search path for `kind`, the project's folder first (for template loaders)."""
    dirs = []
    if project_root is not None and (project_root / kind).is_dir():
        dirs.append(project_root / kind)
    dirs.append(packaged_root() / kind)
    return dirs
