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
    from mlflow_core.orchestration.data import pack_data
    from mlflow_core.workflow.project import Project

    say = (lambda _m: None) if as_json else (lambda m: console.print(f"· {m}"))
    packs, mode = pack_data(Project.find(), say)
    if as_json:
        print_json(packs)
        return
    if mode == "off":
        console.print("data.pack is off in training_config.yaml: training reads the files until you set it to "
                      "auto or on.")
    else:
        console.print(f"Training reads these packs while they match the files (data.pack: {mode}).")
