"""`wf slurm PHASE`: write (and optionally submit) a SLURM batch script for a phase."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console


def register(app: typer.Typer) -> None:
    app.command()(slurm)


def slurm(phase: str = typer.Argument(..., help="The phase the job runs (baseline for several nodes or GPUs)."),
          nodes: int = typer.Option(1, "--nodes", min=1, help="Nodes; more than one: torchrun with a c10d "
                                    "rendezvous on the first node."),
          gpus_per_node: int = typer.Option(1, "--gpus-per-node", min=0, help="GPUs (and wf processes) per node."),
          partition: str = typer.Option(None, "--partition", help="SLURM partition."),
          time: str = typer.Option(None, "--time", help="Time limit: minutes, H:MM:SS or D-HH:MM:SS."),
          account: str = typer.Option(None, "--account", help="SLURM account to charge."),
          cpus_per_task: int = typer.Option(None, "--cpus-per-task", min=1, help="CPU cores per node's task "
                                            "(data-loader workers)."),
          mem: str = typer.Option(None, "--mem", help="Memory per node, e.g. 64G."),
          job_name: str = typer.Option(None, "--job-name", help="Default: wf-PHASE."),
          submit: bool = typer.Option(False, "--submit", help="Run sbatch on the script (where SLURM is present)."),
          ) -> None:
    """Write slurm/PHASE.sbatch: srun launching wf (torchrun across nodes), SLURM's USR1 warning 90 s
    before the end, requeue through wf's handler, `--resume` on restart, one log per job."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.orchestration.slurm import SlurmJob, write_sbatch
    from mlflow_core.orchestration.slurm import submit as sbatch
    from mlflow_core.workflow.phases import PHASE_ORDER
    from mlflow_core.workflow.project import Project

    if phase not in PHASE_ORDER:
        raise UserInputError(f"unknown phase {phase!r}; phases: {', '.join(PHASE_ORDER)}.")
    job = SlurmJob(phase, nodes, gpus_per_node, cpus_per_task, partition, account, time, mem, job_name)
    project = Project.find()
    path = write_sbatch(project, job)
    shown = project.relative(path)
    console.print(f"✔ {shown}: {job.nodes} node(s) × {job.gpus_per_node} GPU(s), requeued on preemption "
                  f"(USR1 90 s before the end), `--resume` on restart", highlight=False)
    if submit:
        console.print(sbatch(path), highlight=False)
    else:
        console.print(f"Submit with: sbatch {shown}", highlight=False)
