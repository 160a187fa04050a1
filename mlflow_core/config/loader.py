"""Load and validate a config file: every problem at once, each with its field path and line."""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mlflow_core.config import CONFIG_FILENAME  # noqa: F401  (re-exported)
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import ConfigError


def load_config(path: str | Path) -> WorkflowConfig:
    path = Path(path)
    # the config is the project's own, committed file: a link to one outside the project (which a pull
    # request can commit) is refused unread, so that no line of that file reaches a message
    if path.is_symlink() and path.parent.resolve() not in path.resolve().parents:
        raise ConfigError(str(path), [f"a link to {path.resolve()}, outside the project: a config is never read "
                                      "from outside it"], hint="Replace the link with the config's own text.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"],
                          hint="Create one with `wf init DIR` or name another with --config.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot be read: {exc}"]) from None
    return load_config_text(text, str(path), empty_is_error=True)


# libyaml's loader when PyYAML was built with it (the wheels are): same safety, several times faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeysLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """A safe loader that refuses a key given twice in one mapping: YAML would keep the later value
    without a word, and a reviewer reading the first one would approve a config that does not run."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}, also on line {first_line[key_node.value]}: "
                        "YAML would keep only the later value; keep one", key_node.start_mark)
                first_line[key_node.value] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_config_text(text: str, source: str, empty_is_error: bool = False) -> WorkflowConfig:
    """`text` validated; empty text is every default (for code), or with `empty_is_error` (a config
    file, which would silently become a run nobody chose) exit 2."""
    raw = _parse_yaml(text, source)
    if raw is None:
        if empty_is_error:
            raise ConfigError(source, ["the file is empty (no sections)"],
                              hint="`wf init DIR` writes a complete config to start from; `wf config schema` "
                              "prints every key.")
        raw = {}
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as exc:
        root_node = yaml.compose(text, Loader=_SafeLoader)  # only now: line numbers for the messages
        located = sorted((_line_of(root_node, tuple(e["loc"])) or 0, i, e) for i, e in enumerate(exc.errors()))
        problems = [_describe(err, line) for line, _, err in located]
        raise ConfigError(source, problems, hint="`wf config schema` prints every key with its type "
                          "and description.") from None


def config_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _parse_yaml(text: str, source: str) -> dict[str, Any] | None:
    try:
        # A safe loader refuses python/object tags: a config stays data.
        raw = yaml.load(text, Loader=_UniqueKeysLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, [f"{where}not valid YAML ({problem})"]) from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(source, [f"the top level must be a mapping of sections, got {type(raw).__name__}"])
    return raw


def _describe(err: dict[str, Any], line: int) -> str:
    loc = tuple(err["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    where = f"line {line}: " if line else ""
    if err["type"] == "extra_forbidden":
        return f"{where}{field}: unknown key{_suggestion(loc)}"
    if err["type"] == "model_type" and not isinstance(err.get("input"), dict):
        return f"{where}{field}: {_section_expected(loc, err.get('input'))}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
        msg = f"{msg} (got {err['input']!r})"
    return f"{where}{field}: {msg}"


def _section_expected(loc: tuple[Any, ...], given: Any) -> str:
    """`scheduler: cosine` where a section goes: what to write instead (pydantic says "a valid
    dictionary or instance of SchedulerSection", a class name the user never sees)."""
    model = _model_at(loc)
    keys = list(model.model_fields) if model else []
    example = (f"`{loc[-1]}: {{name: {given}}}`" if "name" in keys and isinstance(given, str)
               else f"`{loc[-1]}: {{{keys[0]}: ...}}`" if keys else "its keys indented below it")
    return (f"a section with keys below it is expected, got {given!r}; write e.g. {example}"
            + (f" (keys: {', '.join(keys)})" if keys else ""))


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config section model at `loc`, None where `loc` leaves the sections."""
    model: type[BaseModel] = WorkflowConfig
    for part in loc:
        fld = model.model_fields.get(str(part))
        ann = getattr(fld, "annotation", None) if fld else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _suggestion(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(model.model_fields)}"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of its nearest existing parent."""
    best = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            best = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            break
    return best
