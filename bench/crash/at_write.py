"""Run `wf` (python -m mlflow_core) and SIGKILL it in the middle of one atomic write.

wf's atomic writes put the new content in a temp file, fsync it, then `os.replace` it onto the
target. This wrapper counts the `os.replace` calls whose target's name is WF_CRASH_NAME (a run id in it written `<run>`) and, at the
WF_CRASH_AT-th, kills the process after the temp file is complete and before it replaces the old file
(the moment the atomic write exists for). With WF_CRASH_LOG set it kills nothing and appends every
target's name to that file, one per line: the writes a run makes, to aim at.

    WF_CRASH_NAME=state.json WF_CRASH_AT=3 python bench/crash/at_write.py phase baseline
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import sys

_replace = os.replace
_log = os.environ.get("WF_CRASH_LOG")
_name = os.environ.get("WF_CRASH_NAME")
_at = int(os.environ.get("WF_CRASH_AT", "1"))
_seen = 0
_RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")  # a run's id in a file's name: the same file in every run


def aimed_name(path: str) -> str:
    return _RUN_ID.sub("<run>", os.path.basename(path))


def _aimed_replace(src, dst, *args, **kwargs):
    global _seen
    target = os.fspath(dst)
    if _log:
        with open(_log, "a", encoding="utf-8") as f:
            f.write(aimed_name(target) + "\n")
    elif _name and aimed_name(target) == _name:
        _seen += 1
        if _seen == _at:
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


os.replace = _aimed_replace
sys.argv = ["wf", *sys.argv[1:]]
runpy.run_module("mlflow_core", run_name="__main__", alter_sys=True)
