"""`wf slurm PHASE`: write (and optionally submit) a SLURM batch script for a phase."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console


def register(app: typer.Typer) -> None:
    app.command()(slurm)


def slurm(phase: str = typer.Argument(..., help="The phase the job runs (baseline for several nodes or GPUs)."),
          nodes: int = typer.Option(None, "--nodes", min=1, help="Nodes (default 1); more than one: torchrun with a "
                                    "c10d rendezvous on the first node."),
          gpus_per_node: int = typer.Option(None, "--gpus-per-node", min=0, help="GPUs (and wf processes) per node "
                                            "(default 1)."),
          partition: str = typer.Option(None, "--partition", help="SLURM partition."),
          time: str = typer.Option(None, "--time", help="Time limit: minutes, H:MM:SS or D-HH:MM:SS."),
          account: str = typer.Option(None, "--account", help="SLURM account to charge."),
          cpus_per_task: int = typer.Option(None, "--cpus-per-task", min=1, help="CPU cores per node's task "
                                            "(data-loader workers)."),
          mem: str = typer.Option(None, "--mem", help="Memory per node, e.g. 64G."),
          job_name: str = typer.Option(None, "--job-name", help="Default: wf-PHASE."),
          workers: int = typer.Option(None, "--workers", min=1, help="optimization: a job array of N tasks, each "
                                      "`wf phase optimization --worker` on the project's study (a storage every node "
                                      "reaches: PostgreSQL, or journal: on a shared file system), and "
                                      "slurm/optimization-final.sbatch, which compares and reports once they end."),
          reset: bool = typer.Option(False, "--reset", help="Forget the options of the script written before."),
          submit: bool = typer.Option(False, "--submit", help="Run sbatch on the script (where SLURM is present)."),
          ) -> None:
    """Write slurm/PHASE.sbatch: srun launching wf (torchrun across nodes), SLURM's USR1 warning 90 s
    before the end, requeue through wf's handler, `--resume` on restart, one log per job. Options not
    given keep their values from the script written before (--reset forgets them). The script names
    no path of this machine: copy the project anywhere and submit it from the project's root."""
    from mlflow_core.orchestration.slurm import SlurmJob, previous_options, sbatch_path, write_sbatch
    from mlflow_core.orchestration.slurm import submit as sbatch
    from mlflow_core.workflow.phases import load_phase
    from mlflow_core.workflow.project import Project

    load_phase(phase)  # an unknown phase is exit 2, with the closest name
    project = Project.find()
    given = {"nodes": nodes, "gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task, "partition": partition,
             "account": account, "time": time, "mem": mem, "job_name": job_name, "workers": workers}
    before = {} if reset else previous_options(sbatch_path(project, phase))
    kept = {k: before[k] for k in given if given[k] is None and before.get(k) is not None
            and before[k] != SlurmJob.__dataclass_fields__[k].default}  # in the order of the options
    chosen = {k: v for k, v in given.items() if v is not None}
    job = SlurmJob(phase, **{**before, **chosen})
    if job.workers:
        _workers(project, job, submit)
        return
    path = write_sbatch(project, job)
    shown = project.relative(path)
    console.print(f"✔ {shown}: {job.nodes} node(s) × {job.gpus_per_node} GPU(s), requeued on preemption "
                  f"(USR1 90 s before the end), `--resume` on restart", highlight=False)
    if kept:
        console.print("Kept from the script written before: "
                      + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in kept.items())
                      + " (--reset forgets them)", highlight=False)
    if submit:
        console.print(sbatch(path), highlight=False)
    else:
        console.print(f"Submit with: sbatch {shown} (from the project's root, its environment active)",
                      highlight=False)


def _workers(project, job, submit: bool) -> None:
    from mlflow_core.config import load_config
    from mlflow_core.orchestration.slurm import submit as sbatch
    from mlflow_core.orchestration.slurm import write_worker_scripts

    array, final = write_worker_scripts(project, job)
    console.print(f"✔ {project.relative(array)}: {job.workers} array tasks, each `wf phase optimization --worker`; "
                  f"{project.relative(final)}: the comparison and report, once they end", highlight=False)
    if load_config(project.config_path).optimization.storage is None:
        console.print("[yellow]optimization.storage is the project's SQLite file[/]: tasks on several nodes write it "
                      "over a shared file system, which SQLite does not lock reliably. Set it to postgresql://… "
                      "or journal:.wf/optuna.journal.", highlight=False)
    if not submit:
        console.print(f"Submit with: final=$(sbatch --parsable --dependency=afterany:$(sbatch --parsable "
                      f"{project.relative(array)}) {project.relative(final)}) (from the project's root, its environment "
                      "active), or `wf slurm optimization --workers N --submit`", highlight=False)
        return
    array_id = sbatch(array).split(";")[0]
    final_id = sbatch(final, after=array_id).split(";")[0]
    console.print(f"Submitted the workers as job {array_id} and the final step as job {final_id} "
                  f"(after {array_id} ends)", highlight=False)
