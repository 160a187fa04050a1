"""`wf init`: scaffold a project from the packaged content. Never overwrites an existing project."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_core.atomic import atomic_write_bytes, atomic_write_text
from mlflow_core.config.loader import CONFIG_FILENAME, load_config_text
from mlflow_core.config.schema import set_dotted
from mlflow_core.content import packaged_root
from mlflow_core.errors import UserInputError
from mlflow_core.workflow.project import WF_DIR, Project
from mlflow_core.workflow.state import ProjectState, new_project_id, save_state

EXAMPLES = ("digits", "patches")

GITIGNORE = """\
# wf: heavy or machine-local outputs. Commit .wf/state.json, .wf/evidence/, reports/, checklists/,
# diagnostics/ (the playbooks the reports link to) and export/manifest.json (the exports' checksums).
runs/**/checkpoints/
runs/**/nonfinite/
runs/**/tensorboard/
runs/**/wandb/
.wf/lock
.wf/cache/
.wf/optuna.db*
mlflow.db
mlartifacts/
export/*.pt
export/*.pt2
export/*.onnx
data/
"""

# Example settings applied on top of templates/configs/baseline_template.yaml (a first baseline's values).
EXAMPLE_SETTINGS = {
    # 1,797 8x8 images: a GPU would sit idle (and fail the 60 % utilization criterion), so the demo
    # trains on the CPU; real data keeps `auto`.
    # Narrower blocks than the template's: 8x8 images need no 256 channels, and the demo trains in half
    # the time to the same 0.994 validation accuracy.
    "digits": {"data.source": "digits", "data.test_fraction": "0.1", "training.device": "cpu", "training.epochs": "15",
               "model.channels": "[16, 32, 64, 64]", "early_stopping.patience": "5",
               "validation.metric": "val_accuracy", "validation.target": "0.97"},
    # Reflectances of 0.05-0.45 per band: standardised per channel, the model learns in its first epoch;
    # raw, batch norm's running statistics lag the batches' for the few steps 160 patches give, and
    # validation sits at chance for five epochs while training reaches 100 %.
    "patches": {"data.source": "npz", "data.path": "data/patches", "model.channels": "[16, 32, 64, 64]",
                "data.normalize": "per_channel",
                "training.epochs": "10", "early_stopping.patience": "5",
                "validation.metric": "val_accuracy", "validation.target": "0.9"},
}


def set_yaml_value(text: str, dotted: str, value: str) -> str:
    """Replace `section.key`'s value in place, keeping comments and layout."""
    section, key = dotted.split(".")
    lines = text.splitlines(keepends=True)
    in_section = False
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(section)}:\s*(#.*)?$", line):
            in_section = True
            continue
        if in_section and re.match(r"^\S", line):
            break
        m = re.match(rf"^(\s+{re.escape(key)}:\s*)([^#\n]*?)(\s*#.*)?(\n?)$", line) if in_section else None
        if m:
            comment = m.group(3) or ""
            pad = max(1, len(m.group(2)) - len(value) + (len(comment) - len(comment.lstrip())))
            lines[i] = f"{m.group(1)}{value}{' ' * pad + comment.lstrip() if comment else ''}{m.group(4)}"
            return "".join(lines)
    raise KeyError(f"{dotted} not found in the config template")


def write_config_variant(project: Project, changes: dict[str, Any], header: str, path: Path) -> Path:
    """The project's config with `changes` (dotted keys) applied, written to `path` under `header`.

    Values are set in place so that the person's comments and layout survive; when a key is
    absent from their file (or nested deeper than section.key) the file is rewritten without its
    comments. What is written must validate; training_config.yaml itself is never touched."""
    import json

    import yaml


    original = project.config_path.read_text(encoding="utf-8")
    text = original
    try:
        for dotted, value in changes.items():
            if dotted.count(".") != 1:
                raise KeyError(dotted)
            # a float as Python writes it back exactly (repr): the config must train what was measured
            text = set_yaml_value(text, dotted, json.dumps(value))
    except KeyError:
        raw = yaml.safe_load(original) or {}
        for dotted, value in changes.items():
            set_dotted(raw, dotted, value)
        text = yaml.safe_dump(raw, sort_keys=False)
    load_config_text(text, str(path))
    atomic_write_text(path, header + text)
    return path


def render_config(project_name: str, example: str) -> str:
    text = (packaged_root() / "templates" / "configs" / "baseline_template.yaml").read_text(encoding="utf-8")
    text = set_yaml_value(text, "project.name", f'"{project_name}"')
    for dotted, value in EXAMPLE_SETTINGS[example].items():
        text = set_yaml_value(text, dotted, value)
    load_config_text(text, "templates/configs/baseline_template.yaml")  # the scaffold must validate
    return text


def write_patches(root: Path, *, bands: int = 6, size: int = 32, classes: int = 4, train: int = 160,
                  val: int = 48, test: int = 48, seed: int = 0) -> None:
    """6-band Sentinel-2 stand-in: one .npz per patch (image (bands, H, W) float32, label int),
    in train/, val/ and test/ folders (test is for finalization only). Each class has its own
    spectral signature under noise and texture."""
    rng = np.random.default_rng(seed)
    signatures = rng.uniform(0.05, 0.45, size=(classes, bands)).astype(np.float32)
    for split, count in (("train", train), ("val", val), ("test", test)):
        if not count:
            continue
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            label = i % classes
            texture = rng.normal(0, 0.05, size=(1, size, size)).astype(np.float32)
            noise = rng.normal(0, 0.08, size=(bands, size, size)).astype(np.float32)
            image = signatures[label][:, None, None] + texture + noise
            buf = _npz_bytes(image=image.astype(np.float32), label=np.int64(label))
            atomic_write_bytes(folder / f"patch_{i:05d}.npz", buf)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


def init_project(directory: Path, example: str = "digits", settings: dict[str, str] | None = None) -> Project:
    """A new project: the config of `example` (with `settings`, dotted keys, over it), the
    checklists, the state file."""
    if example not in EXAMPLES:
        raise UserInputError(f"unknown example {example!r}; choose one of: {', '.join(EXAMPLES)}.")
    directory = directory.resolve()
    if (directory / WF_DIR / "state.json").exists():
        raise UserInputError(f"{directory} is already a wf project; nothing was changed.",
                             hint="Run `wf status` there.")
    enclosing = next((d for d in directory.parents if (d / WF_DIR / "state.json").is_file()), None)
    if enclosing is not None:  # its commands would find the inner project, its files the outer one's git
        raise UserInputError(f"{directory} is inside the wf project {enclosing}; a project inside another is "
                             "not created (nothing was changed).",
                             hint=f"Choose a directory outside {enclosing}, e.g. `wf init {enclosing.parent / directory.name}`.")
    for existing in (directory / CONFIG_FILENAME, directory / "checklists"):
        if existing.exists():
            raise UserInputError(f"{existing} already exists; nothing was changed.",
                                 hint="Choose an empty or new directory for `wf init`.")
    directory.mkdir(parents=True, exist_ok=True)
    project = Project(directory)
    config_text = render_config(directory.name, example)
    for key, value in (settings or {}).items():
        config_text = set_yaml_value(config_text, key, value)
    shutil.copytree(packaged_root() / "checklists", project.checklists_dir)
    if example == "patches":
        write_patches(directory / "data" / "patches")
    gitignore = directory / ".gitignore"
    if not gitignore.exists():
        atomic_write_text(gitignore, GITIGNORE)
    atomic_write_text(project.config_path, config_text)
    state = ProjectState(project_id=new_project_id())
    state.record("init", example=example)
    save_state(project, state)
    return project
