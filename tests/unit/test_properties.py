"""Arbitrary input never crashes the parsers: it yields a result or wf's own error (exit 2)."""

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_core.config import load_config_text
from mlflow_core.errors import ChecklistError, ConfigError
from mlflow_core.workflow.checklist import parse_checklist_text

yaml_like = st.one_of(
    st.text(max_size=300),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)),
                 lambda children: st.one_of(st.lists(children, max_size=4),
                                            st.dictionaries(st.sampled_from(
                                                ["training", "data", "model", "epochs", "batch_size", "source",
                                                 "learning_rate", "x", "validation", "metric"]), children, max_size=4)),
                 max_leaves=12).map(lambda obj: __import__("yaml").safe_dump(obj)),
)


@settings(max_examples=300, deadline=None)
@given(yaml_like)
def test_config_loader_total(text):
    try:
        load_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml") and exc.problems


line = st.one_of(
    st.text(max_size=80),
    st.builds(lambda mark, body, meta: f"- [{mark}] {body} <!-- {meta} -->",
              st.sampled_from([" ", "x", "X"]), st.text(max_size=30),
              st.text(alphabet="abcdefghijklmnopqrstuvwxyz_:; ", max_size=40)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=12))
def test_checklist_parser_total(lines):
    try:
        checklist = parse_checklist_text("\n".join(lines), Path("fuzz.md"), "fuzz", known_checks={"run_completed"})
    except ChecklistError as exc:
        assert str(exc).startswith("fuzz.md")
    else:
        ids = [i.id for i in checklist.items]
        assert len(ids) == len(set(ids))
