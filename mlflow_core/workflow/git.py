"""git, asked from a folder: what a command prints, never a failure. Provenance (the commit a gate
verified), who committed a waiver, where this wf's own checkout is: each reads git the same way."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(folder: Path, *args: str, timeout: float = 20) -> str | None:
    """git's output in `folder`, stripped; None outside a repository, without git, on a failure or
    past `timeout` seconds."""
    try:
        out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
