"""JSON that wf reads back (state, evidence, records, manifests): files a pull request may change.
Python's decoder answers a document nested some thousand levels deep with a RecursionError, which
would end the command in a traceback: here it is a ValueError, which the readers already turn into
their file's one-line message."""

from __future__ import annotations

import json
from typing import Any


class NestedTooDeep(ValueError):
    """A JSON document nested deeper than Python's decoder goes."""


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise NestedTooDeep("nested deeper than any file wf writes (a JSON value inside thousands of others)") from None
