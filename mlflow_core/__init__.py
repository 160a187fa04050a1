"""wf: phase-gated, reproducible, reviewable PyTorch training workflows.

`mlflow_core` is the engine ("ML workflow core"). It never imports typer or rich (those belong to
`mlflow_core.cli`), and nothing reachable from the non-training commands imports torch.
"""

__version__ = "0.1.0"
