"""Phase 4: beat the baseline on evidence.

1. An LR range test on the configured model and data (its suggestion is reported, not imposed).
2. An Optuna study over `optimization.search_space`: every trial is a real run of the shared
   trainer with its own run directory and evidence, reporting its validation metric each epoch to
   the pruner. The study lives in `.wf/optuna.db` (or any Optuna RDB URL) under a name derived from
   the project and the search space, so an interrupted sweep continues where it stopped and several
   machines can share one study.
3. A fair comparison: the baseline config and the best trial's config are both re-run with the
   same `optimization.seeds` seeds for the full `training.epochs`, and compared with a one-sided
   Welch t-test. The phase passes only when the improvement exceeds the seed noise.
"""

from __future__ import annotations

import math
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

from mlflow_core.config.schema import WorkflowConfig, with_changes
from mlflow_core.errors import UserInputError
from mlflow_core.runners import RunContext, RunOutput, SubRunInterrupted, fit_or_continue
from mlflow_core.runners.baseline import run_proof
from mlflow_core.runners.plans import about
from mlflow_core.runners.pruning import PruningRule, Verdict, build_pruner, pruned_at, pruning_rule
from mlflow_core.runners.study import (
    importance,
    open_study,
    requeue_abandoned_trials,
    run_trials,
    study_name,
    suggest,
    trial_row,
    wait_for_other_workers,
)
from mlflow_core.runners.trial_slots import (
    holds_a_slot,
    owner_tag,
)
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.lr_finder import lr_range_test
from mlflow_core.workflow.evidence import file_sha256
from mlflow_core.workflow.facts import OptimizationFacts
from mlflow_core.workflow.records import load_run_metrics
from mlflow_core.workflow.scaffold import write_config_variant
from mlflow_core.workflow.units import metric_difference


def run_optimization(ctx: RunContext) -> RunOutput:
    """An LR range test, an Optuna study whose trials are runs of the shared trainer, the best trial
    and the baseline compared over seeds, and the optimized config."""
    try:
        import optuna
    except ImportError:
        raise UserInputError("`wf phase optimization` needs Optuna, which is not installed.",
                             hint="Install it with `pip install 'wf-phases[tune]'` (the README's dev install includes it).") from None

    cfg, opt, say = ctx.cfg, ctx.cfg.optimization, ctx.on_message
    maximize = cfg.validation.mode == "max"
    data = build_data(cfg, ctx.project.root)
    facts: dict[str, Any] = {"run_dir": ctx.project.relative(ctx.run_dir), "metric": cfg.validation.metric,
                             "direction": "maximize" if maximize else "minimize"}
    study, shown_url, rule, objective = _sweep(optuna, ctx, data)  # first: a bad storage URL costs nothing
    trial_epochs = objective.trial_epochs
    if opt.lr_find:
        facts["lr_range_test"] = _lr_range_test(ctx, data)

    requeue_abandoned_trials(optuna, study, ctx)
    held = sum(holds_a_slot(t) for t in study.get_trials(deepcopy=False))
    # read once, with the data: the baseline run that may stand for the comparison's run of its seed
    recorded = recorded_baseline(ctx)
    say(plan_line(ctx, max(0, opt.n_trials - held), trial_epochs, recorded))
    if held:
        say(f"Study {study.study_name}: {min(held, opt.n_trials)} of {opt.n_trials} trials run or running")
    try:
        if held < opt.n_trials:
            if opt.pruner == "median":
                say(f"Pruning: {rule.describe()}")
            run_trials(optuna, ctx, study, objective)
        wait_for_other_workers(optuna, study, ctx, objective)
    except SubRunInterrupted as stop:
        return stop.output(ctx)
    trials = [trial_row(t) for t in study.trials]
    if ctx.tracking is not None:
        ctx.tracking.gather_study(study.study_name)  # trials sweep workers ran, nested under this run
    facts["study"] = {"name": study.study_name, "storage": shown_url, "n_trials": opt.n_trials, "sampler": opt.sampler,
                      "pruner": opt.pruner, "trial_epochs": trial_epochs,
                      "pruning": ({**rule.to_json(), "pruned_after_epoch": pruned_at(trials)}
                                  if opt.pruner == "median" else None),
                      "counts": {s: sum(1 for t in trials if t["state"] == s) for s in
                                 ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
                      "search_space": {k: v.model_dump(mode="json", exclude_none=True)
                                       for k, v in opt.search_space.items()}}
    facts["trials"] = trials
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        facts["comparison"] = None
        return RunOutput("completed", OptimizationFacts.model_validate(facts),
                         notes=["No trial completed: nothing to compare with the baseline."])
    best = study.best_trial
    facts["best"] = best_trial_facts(ctx, best)
    facts["importance"] = importance(optuna, study)
    try:
        facts["comparison"] = _compare_over_seeds(ctx, best.params, data, recorded)
    except SubRunInterrupted as stop:
        return stop.output(ctx)
    path = write_optimized_config(ctx, best.params, best.number, best.value, facts["comparison"],
                                  ctx.run_dir / "optimized_config.yaml" if ctx.smoke else None)
    facts["optimized_config"] = {"path": ctx.project.relative(path), "sha256": file_sha256(path)}
    return RunOutput("completed", OptimizationFacts.model_validate(facts))


def run_worker(ctx: RunContext) -> tuple[int, int]:
    """`wf phase optimization --worker`: trials only, against the project's study, until it holds
    optimization.n_trials; no LR range test, no comparison, no evidence (the final `wf phase
    optimization` writes those once). (trials this worker ran, trials the study holds)."""
    try:
        import optuna
    except ImportError:
        raise UserInputError("`wf phase optimization --worker` needs Optuna, which is not installed.",
                             hint="Install it with `pip install 'wf-phases[tune]'`.") from None
    study, _, _, objective = _sweep(optuna, ctx, build_data(ctx.cfg, ctx.project.root))
    requeue_abandoned_trials(optuna, study, ctx)
    ran = run_trials(optuna, ctx, study, objective)
    return ran, sum(holds_a_slot(t) for t in study.get_trials(deepcopy=False))


def _sweep(optuna: Any, ctx: RunContext, data: Any) -> tuple[Any, str, PruningRule, TrialObjective]:
    """The study (opened or created), the storage as reports show it, the pruning rule, and the
    objective that runs a trial: what the final step and every worker share."""
    cfg, opt = ctx.cfg, ctx.cfg.optimization
    trial_epochs = opt.trial_epochs or cfg.training.epochs
    rule = pruning_rule(opt, trial_epochs, cfg.validation.metric, len(data.val), cfg.validation.mode == "max")
    pruner = build_pruner(optuna, rule) if opt.pruner == "median" else optuna.pruners.NopPruner()
    study, shown_url = open_study(optuna, ctx, pruner)
    if ctx.tracking is not None:  # every trial's MLflow run names its study (workers' too)
        ctx.tracking.training_tags["wf.study"] = study.study_name
    return study, shown_url, rule, TrialObjective(optuna, ctx, study, data, trial_epochs, pruner)


def _lr_range_test(ctx: RunContext, data: Any) -> dict[str, Any]:

    cfg, say = ctx.cfg, ctx.on_message
    say("LR range test")
    sweep = lr_range_test(cfg, ctx.project.root, data, steps=10 if ctx.smoke else 100)
    if sweep.get("suggested_lr"):
        say(f"LR range test suggests {sweep['suggested_lr']:.3g} ({sweep['rule']}); configured "
            f"{cfg.training.learning_rate:g}")
    return {k: sweep[k] for k in ("lrs", "smoothed", "suggested_lr", "rule", "stop_reason", "min_loss_lr")}


def searches_data(cfg: WorkflowConfig) -> bool:
    """Whether the search space changes the data section: then each run builds its own data."""
    return any(key.startswith("data.") for key in cfg.optimization.search_space)


class TrialObjective:
    """One Optuna trial: a run of the shared trainer with the trial's values, reporting each epoch's
    validation metric to the pruner. An interrupted trial is recorded as failed (Optuna's only way to
    end it) and enqueued again with its values, so that `--resume` continues it from its checkpoint."""

    def __init__(self, optuna: Any, ctx: RunContext, study: Any, data: Any, trial_epochs: int, pruner: Any):
        self.optuna, self.ctx, self.study, self.data, self.trial_epochs = optuna, ctx, study, data, trial_epochs
        self.verdicts: dict[int, Verdict] = getattr(pruner, "verdicts", {})
        self.rebuild = searches_data(ctx.cfg)

    def __call__(self, trial: Any) -> float:
        ctx, study = self.ctx, self.study
        changes = {key: suggest(trial, key, spec) for key, spec in ctx.cfg.optimization.search_space.items()}
        # best and last checkpoints only: periodic ones for every trial would fill the disk
        trial_cfg = with_changes(ctx.cfg, {**changes, "training.epochs": self.trial_epochs,
                                           "checkpointing.checkpoint_every_n_epochs": 0})
        trial_dir = self._trial_dir(trial)
        trial.set_user_attr("run_dir", ctx.project.relative(trial_dir))
        trial.set_user_attr("owner", owner_tag(ctx.project.root))
        shown = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in changes.items())
        budget = ctx.cfg.optimization.n_trials  # trial numbers count on over a resumed or shared study
        ctx.on_message(f"Trial {trial.number} ({min(trial.number + 1, budget)}/{budget}): {shown}")

        def report(epoch: int, value: float) -> bool:
            if not math.isfinite(value):
                return False
            trial.report(value, epoch)
            # the budget's last epoch: nothing is left to save, the trial completed (never "pruned")
            return epoch < self.trial_epochs and trial.should_prune()

        t0 = time.perf_counter()
        try:
            result = fit_or_continue(ctx, trial_cfg, trial_dir, f"{ctx.run_id}/{trial_dir.name}",
                                     phase="optimization", data=None if self.rebuild else self.data, on_epoch=report)
        except SubRunInterrupted:
            trial.set_user_attr("status", "interrupted")
            study.enqueue_trial(changes, user_attrs={"continues": ctx.project.relative(trial_dir)})
            raise
        record = result.record
        best = record.best.value if record.best else None
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("epochs", len(record.epochs))
        trial.set_user_attr("duration_s", round(time.perf_counter() - t0, 2))
        metric, epochs = ctx.cfg.validation.metric, len(record.epochs)
        if result.status == "pruned":
            verdict = self.verdicts.get(trial.number)
            why = (f"best {metric} {verdict.best:.4g} against the median {verdict.median:.4g} of {verdict.completed} "
                   f"completed trials at that epoch, worse by more than {verdict.margin:.2g}" if verdict else
                   "judged by the pruner unlikely to beat the completed trials")
            ctx.on_message(f"Trial {trial.number}: pruned after epoch {epochs} ({why})")
            raise self.optuna.TrialPruned(record.stop_reason)
        if best is None or not math.isfinite(best):
            ctx.on_message(f"Trial {trial.number}: failed ({result.status}; no finite {metric})")
            return math.nan  # Optuna records the trial as failed (a NaN run, say), and carries on
        ctx.on_message(f"Trial {trial.number}: {metric} {best:.4g} after {epochs} epochs"
                       + self._versus_best(best))
        return float(best)

    def _versus_best(self, value: float) -> str:
        """How the trial compares with the best completed one before it."""
        try:
            best = self.study.best_value
        except ValueError:  # no trial completed yet
            return " (the first completed)"
        better = value > best if self.study.direction.name == "MAXIMIZE" else value < best
        return " (a new best)" if better else f" (best so far {best:.4g})"

    def told(self, trial: Any, state: str) -> None:
        """Optuna's trial number and the state it recorded, as tags of the trial's MLflow run (whose
        folder may be an earlier, interrupted trial's, continued under a new number)."""
        tracking, run_dir = self.ctx.tracking, trial.user_attrs.get("run_dir")
        if tracking is not None and run_dir:
            from mlflow_core.monitoring.mlflow_runs import tag_training_run

            tag_training_run(tracking.store, self.ctx.project.root / run_dir,
                             {"optuna.trial.number": trial.number, "optuna.trial.state": state,
                              "optuna.study": self.study.study_name})

    def _trial_dir(self, trial: Any) -> Path:
        """trials/trial_NNN; for an interrupted trial enqueued again, its own directory, with the epochs
        it reported before the interruption reported again, so that the pruner sees the full curve."""
        ctx = self.ctx
        trial_dir = ctx.run_dir / "trials" / f"trial_{trial.number:03d}"
        continues = trial.user_attrs.get("continues")
        if continues and ctx.resuming and (ctx.project.root / continues).parent == trial_dir.parent:
            trial_dir = ctx.project.root / continues  # same run: pick it up from its resume checkpoint
            before = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "FAIL"
                      and t.user_attrs.get("run_dir") == continues]  # the latest, if stopped more than once
            for epoch, value in sorted((before[-1].intermediate_values if before else {}).items()):
                trial.report(value, epoch)
        return trial_dir


def _compare_over_seeds(ctx: RunContext, params: dict[str, Any], data: Any,
                        recorded: tuple[Path, Any] | None) -> dict[str, Any]:
    """The baseline config and the best trial's, each trained with `optimization.seeds` seeds, compared
    by a one-sided Welch t-test on the best validation metric."""
    cfg, opt = ctx.cfg, ctx.cfg.optimization
    rebuild = searches_data(cfg)
    seeds = [cfg.reproducibility.seed + i for i in range(opt.seeds)]
    runs: dict[str, list[float]] = {"baseline": [], "optimized": []}
    proofs = []
    for label, changes in (("baseline", {}), ("optimized", params)):
        for seed in seeds:
            run_cfg = with_changes(cfg, {**changes, "reproducibility.seed": seed})
            reused = recorded if label == "baseline" and recorded and same_computation(recorded[1], run_cfg) else None
            if reused is not None:  # the run the baseline gate judged: training it again changes nothing
                run_dir, record = reused
                ctx.on_message(f"Comparison: {label} config, seed {seed}: the recorded baseline run "
                               f"{record.run_id} (same config, seed, data and code), not trained again")
            else:
                ctx.on_message(f"Comparison: {label} config, seed {seed}")
                run_dir = ctx.run_dir / "comparison" / f"{label}_seed{seed}"
                record = fit_or_continue(ctx, run_cfg, run_dir, f"{ctx.run_id}/{label}_seed{seed}",
                                         phase="optimization", data=None if rebuild and changes else data).record
            value = record.best.value if record.best else None
            runs[label].append(float(value) if value is not None else math.nan)
            proofs.append({"label": label, "seed": seed, "run_dir": ctx.project.relative(run_dir), "value": value,
                           "proof": run_proof(ctx, run_dir, record).model_dump(mode="json"),
                           **({"reused": record.run_id} if reused is not None else {})})
    return {**compare(runs["baseline"], runs["optimized"], seeds, cfg.validation.mode == "max", opt.significance,
                      cfg.validation.metric), "runs": proofs}


def plan_line(ctx: RunContext, trials: int, trial_epochs: int, recorded: tuple[Path, Any] | None) -> str:
    """What the phase will train, said before it trains: the trials, then the comparison's runs
    (the recorded baseline standing for its seed where it can), and about how long, from the
    baseline's measured epoch time (else setup's measured training throughput)."""
    cfg, opt = ctx.cfg, ctx.cfg.optimization
    seeds = [cfg.reproducibility.seed + i for i in range(opt.seeds)]
    reused = [s for s in seeds if recorded and same_computation(recorded[1], with_changes(
        cfg, {"reproducibility.seed": s}))]
    comparison_runs = 2 * len(seeds) - len(reused)
    epochs = trials * trial_epochs + comparison_runs * cfg.training.epochs
    text = (f"Plan: {trials} trial{'s' * (trials != 1)} × {trial_epochs} epoch{'s' * (trial_epochs != 1)} "
            f"(fewer where pruned), then the comparison over seeds {', '.join(map(str, seeds))}: the baseline and "
            f"the optimized config × {cfg.training.epochs} epochs, {comparison_runs} runs to train"
            + (f" (the recorded baseline run stands for seed {reused[0]})" if reused else "")
            + f"; at most {epochs:,} epochs")
    return text + about(ctx.project, epochs) + "."


def recorded_baseline(ctx: RunContext) -> tuple[Path, Any] | None:
    """The baseline run the baseline gate judged, when it can stand for the comparison's baseline
    run of its seed: it ran to its end here, and neither the data, the code nor the packages changed
    since it was verified (its gate has not re-opened)."""
    from mlflow_core.workflow.evidence import read_evidence
    from mlflow_core.workflow.gates import evaluate_gate
    from mlflow_core.workflow.state import load_state

    evidence = read_evidence(ctx.project, "baseline")
    if evidence is None or not evidence.intact or evidence.facts.status not in ("completed", "early_stopped"):
        return None
    run_dir = ctx.project.inside(evidence.facts.run_dir)
    metrics = ctx.project.root / evidence.facts.metrics.path
    if not metrics.is_file() or evaluate_gate(ctx.project, load_state(ctx.project), "baseline").drift:
        return None
    try:
        record = load_run_metrics(metrics)
    except UserInputError:
        return None
    if file_sha256(metrics) != evidence.facts.metrics.sha256 or record.best is None:
        return None  # not the figures the gate judged
    return run_dir, record


def same_computation(record: Any, cfg: WorkflowConfig) -> bool:
    """Whether a recorded run trained what `cfg` trains: every setting that changes a weight equal
    (the phases' own sections and the trackers aside)."""
    from mlflow_core.workflow.fingerprints import flatten, vouched

    return vouched(flatten(record.config), "baseline") == vouched(flatten(cfg.model_dump(mode="json")), "baseline")


def best_trial_facts(ctx: RunContext, best: Any) -> dict[str, Any]:
    """The best trial, with what `wf verify` recomputes its value from when its run is on this machine
    (a sweep worker elsewhere keeps its files there)."""
    out = {"trial": best.number, "value": best.value, "params": best.params}
    run_dir = best.user_attrs.get("run_dir")
    metrics = ctx.project.root / run_dir / "logs" / "metrics.json" if run_dir else None
    if metrics is not None and metrics.is_file():
        out.update(run_dir=run_dir, proof=run_proof(ctx, ctx.project.root / run_dir,
                                                    load_run_metrics(metrics)).model_dump(mode="json"))
    return out


def compare(baseline: list[float], optimized: list[float], seeds: list[int], maximize: bool, alpha: float,
            metric: str) -> dict[str, Any]:
    """Mean ± std of each, and a one-sided Welch t-test that the optimized config is better."""
    base = [v for v in baseline if math.isfinite(v)]
    best = [v for v in optimized if math.isfinite(v)]
    out: dict[str, Any] = {"metric": metric, "seeds": seeds, "baseline": baseline, "optimized": optimized,
                           "alpha": alpha, "test": "one-sided Welch t-test"}
    if len(base) < 2 or len(best) < 2:
        out.update(significant=False, p_value=None, verdict="too few finite runs to compare")
        return out
    mb, mo = statistics.mean(base), statistics.mean(best)
    sb, so = statistics.stdev(base), statistics.stdev(best)
    gain = (mo - mb) if maximize else (mb - mo)
    out.update(baseline_mean=mb, baseline_std=sb, optimized_mean=mo, optimized_std=so, improvement=gain)
    if sb == 0 and so == 0:
        p = 0.0 if gain > 0 else 1.0  # no noise at all: any gain is real, none is none
    else:
        import warnings

        from scipy import stats
        with warnings.catch_warnings():  # nearly identical runs: scipy warns of precision loss, p is still right
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_ind(best, base, equal_var=False,
                                      alternative="greater" if maximize else "less").pvalue)
    out["p_value"] = p
    out["significant"] = bool(gain > 0 and p < alpha)
    shown_gain = metric_difference(gain, metric)  # positive: better, in either direction
    out["verdict"] = (f"the optimized config is better by {shown_gain.lstrip('+')} of {metric} (p = {p:.3g} < {alpha})"
                      if out["significant"] else
                      f"no improvement beyond the seed noise ({shown_gain} of {metric}, p = {p:.3g}, needs < {alpha})")
    return out


def write_optimized_config(ctx: RunContext, params: dict[str, Any], trial: int, value: float,
                           comparison: dict[str, Any], path: Path | None = None) -> Path:
    """training_config.yaml with the best trial's values, comments kept where the keys exist."""

    values = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())
    header = (f"# Written by `wf phase optimization` on {date.today()}, run {ctx.run_id}:\n"
              f"# trial {trial} of study {study_name(ctx.cfg)} ({values}), {ctx.cfg.validation.metric} {value:.4g}.\n"
              f"# Against the baseline over seeds {comparison['seeds']}: {comparison['verdict']}.\n")
    return write_config_variant(ctx.project, params, header,
                                path or ctx.project.root / "configs" / "optimized_config.yaml")
