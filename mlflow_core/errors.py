"""One error hierarchy. `mlflow_core.cli.main` maps these to exit codes in one place.

Exit codes of `wf` (documented in the README and in `wf --help`):
  0  success
  1  the phase ran but failed its success criteria; a gate check that does not pass
  2  bad input (config, checklist, state, data, arguments)
  3  the entry gate of the phase is closed
  4  the project is in use by another wf command
  5  a file could not be written (disk full, read-only file system, permission denied)
  6  a data-parallel run lost one of its processes mid-run (resumable)
  124 stopped at its --time-limit (resumable)
  129 the terminal went away (SIGHUP); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM);
  138 preempted (SIGUSR1, SLURM's warning)
"""

from __future__ import annotations

from collections.abc import Iterable


class WfError(Exception):
    """Base of every error wf expects; the message is for a person and names what to do next."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class UserInputError(WfError):
    """Bad input: a file or argument a person wrote. Exit 2, nothing overwritten."""

    exit_code = 2


class ConfigError(UserInputError):
    """A config file that does not validate. Carries every problem, each with its field path."""

    def __init__(self, path: str, problems: list[str], *, hint: str | None = None):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{path}: {len(problems)} {noun}:\n{lines}", hint=hint)


class ChecklistError(UserInputError):
    pass


class StateError(UserInputError):
    pass


class DataError(UserInputError):
    pass


class NotAProjectError(UserInputError):
    pass


class GateClosedError(WfError):
    exit_code = 3


class ProjectBusyError(WfError):
    exit_code = 4


class StorageError(WfError):
    """A write the run depends on failed (disk full, quota, read-only file system, permission
    denied). Every such write is atomic, so the previous version of the file is intact."""

    exit_code = 5


class RankLostError(WfError):
    """A data-parallel run lost one of its processes mid-run (it crashed, was killed, or stopped on
    an error of its own, which it reports itself): the collectives every rank takes part in cannot go
    on, so each rank stops at once. The run stays resumable from its last resume checkpoint."""

    exit_code = 6


class PhaseFailedError(WfError):
    """The phase ran to the end but did not meet its success criteria."""

    exit_code = 1


class RunInterruptedError(WfError):
    """Ctrl-C (or SIGTERM) during a phase: the run is recorded as interrupted."""

    exit_code = 130


class RunTerminatedError(RunInterruptedError):
    """SIGTERM during a phase (a scheduler's preemption, `kill`): recorded, resumable, exit 143."""

    exit_code = 143


class RunHangupError(RunInterruptedError):
    """SIGHUP during a phase (the terminal or SSH session closed): saved like SIGTERM, exit 129."""

    exit_code = 129


class RunTimeLimitError(RunInterruptedError):
    """`--time-limit` reached (a Kaggle session's 9 hours, an allocation's end): saved, resumable,
    exit 124 as coreutils' timeout."""

    exit_code = 124


class RunPreemptedError(RunInterruptedError):
    """SIGUSR1, SLURM's warning before preemption (`--signal=USR1@90`): saved, requeued, exit 138."""

    exit_code = 138


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest of `choices` to a mistyped `word`, else ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
