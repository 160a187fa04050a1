"""Helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path


def configure(project: Path, settings) -> None:
    """Set section.key values in the project's training_config.yaml, comments kept."""
    from mlflow_core.workflow.scaffold import set_yaml_value

    config = project / "training_config.yaml"
    text = config.read_text()
    for key, value in settings:
        text = set_yaml_value(text, key, value)
    config.write_text(text)
