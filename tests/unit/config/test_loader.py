from pathlib import Path

import pytest

from mlflow_core.config import load_config, load_config_text
from mlflow_core.errors import ConfigError

TEMPLATE = Path(__file__).resolve().parents[3] / "templates" / "configs" / "baseline_template.yaml"


def test_template_validates_with_seed_003_values():
    cfg = load_config(TEMPLATE)
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.training.learning_rate) == (20, 32, 1e-3)
    assert cfg.early_stopping.patience == 10 and cfg.early_stopping.min_delta == 0.001
    assert cfg.checkpointing.checkpoint_every_n_epochs == 5
    assert cfg.validation.metric == "val_loss" and cfg.validation.mode == "min"


def test_yaml_11_exponent_without_dot_is_accepted():
    assert load_config_text("training:\n  learning_rate: 1e-3\n", "c.yaml").training.learning_rate == 1e-3


def test_every_problem_is_listed_with_line_and_field():
    text = "training:\n  epocs: 5\n  batch_size: -1\nvalidation:\n  metric: acc\n"
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "c.yaml")
    problems = exc.value.problems
    assert len(problems) == 3
    assert problems[0] == "line 2: training.epocs: unknown key; did you mean 'epochs'?"
    assert problems[1].startswith("line 3: training.batch_size: Input should be greater than or equal to 1")
    assert problems[2].startswith("line 5: validation.metric:")
    assert str(exc.value).startswith("c.yaml: 3 problems")


@pytest.mark.parametrize("text, fragment", [
    ("training: [1\n", "line 2, column 1: not valid YAML"),
    ("!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("data:\n  source: npz\n", "data.source 'npz' needs data.path"),
    ("model:\n  name: custom\n  target: 'not an import path'\n", "must look like 'module:attribute'"),
    ("training:\n  device: tpu\n", "must be auto, cpu, cuda or cuda:N"),
    ("schema_version: 2\n", "schema_version"),
])
def test_bad_configs_are_named(text, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "bad.yaml")
    assert fragment in str(exc.value)
    assert str(exc.value).startswith("bad.yaml")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
