"""`wf data pack`: the project's NPZ splits as packed, memory-mapped arrays (workflow/packs.py)."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console, print_json

app = typer.Typer(help="Prepare the project's data for fast reading.", no_args_is_help=True)


@app.command()
def pack(as_json: bool = typer.Option(False, "--json", help="Print what each split's pack holds as JSON.")) -> None:
    """Pack each split of an NPZ folder or ImageFolder (train, val, test) into uncompressed memory-mapped
    arrays under .wf/cache/packs/: training then gathers a batch at once instead of opening one archive
    or decoding one image per sample (ImageFolder images are stored decoded, at data.image_size).
    The files stay the truth: a pack is named by their content and rebuilt when they change.
    `wf phase setup` packs too when data.pack is auto or on."""
    from mlflow_core.config import load_config
    from mlflow_core.workflow.packs import pack_project_data
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import project_lock

    project = Project.find()
    cfg = load_config(project.config_path)
    say = (lambda _m: None) if as_json else (lambda m: console.print(f"· {m}"))
    with project_lock(project, "wf data pack"):
        if cfg.data.source in ("imagefolder", "csv"):  # images are decoded by torchvision: only then is torch loaded
            from mlflow_core.training.data.sources import pack_data
            packs = pack_data(cfg, project.root, say)
        else:
            packs = pack_project_data(cfg, project.root, say)
    if as_json:
        print_json(packs)
        return
    if cfg.data.pack == "off":
        console.print("data.pack is off in training_config.yaml: training reads the files until you set it to "
                      "auto or on.")
    else:
        console.print(f"Training reads these packs while they match the files (data.pack: {cfg.data.pack}).")
