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

import hashlib
import json
import math
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

from mlflow_core.config.phase_settings import SearchParameter
from mlflow_core.config.schema import WorkflowConfig, with_changes
from mlflow_core.errors import UserInputError
from mlflow_core.runners import RunContext, RunOutput, SubRunInterrupted, fit_or_continue
from mlflow_core.runners.pruning import PruningRule, Verdict, build_pruner, pruned_at, pruning_rule
from mlflow_core.runners.trial_slots import (
    claim_lock,
    holds_a_slot,
    lock_file_for,
    open_storage,
    owner_is_gone,
    owner_tag,
)
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.lr_finder import lr_range_test
from mlflow_core.workflow.evidence import file_sha256
from mlflow_core.workflow.facts import OptimizationFacts
from mlflow_core.workflow.scaffold import write_config_variant
from mlflow_core.workflow.units import metric_difference


def study_name(cfg: WorkflowConfig) -> str:
    opt = cfg.optimization
    if opt.study_name:
        return opt.study_name
    space = json.dumps({k: v.model_dump(mode="json") for k, v in sorted(opt.search_space.items())}, sort_keys=True)
    key = hashlib.sha256(f"{space}|{cfg.validation.metric}".encode()).hexdigest()[:10]
    return f"{cfg.project.name}-{key}"


def storage_url(ctx: RunContext) -> str:
    if ctx.smoke:  # a throwaway study next to the throwaway runs
        return f"sqlite:///{ctx.run_dir / 'optuna.db'}"
    return ctx.cfg.optimization.storage or f"sqlite:///{ctx.project.root / '.wf' / 'optuna.db'}"


def redacted(url: str) -> str:
    """An RDB URL without its password, for reports and evidence."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def suggest(trial: Any, key: str, spec: SearchParameter) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def _sampler(optuna: Any, cfg: WorkflowConfig, seed: int) -> Any:
    opt = cfg.optimization
    if opt.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if opt.sampler == "grid":
        grid = {}
        for key, spec in opt.search_space.items():
            if spec.type == "categorical":
                grid[key] = spec.choices
            elif spec.step:
                count = round((spec.high - spec.low) / spec.step) + 1
                grid[key] = [spec.low + i * spec.step for i in range(count)]
                if spec.type == "int":
                    grid[key] = [int(v) for v in grid[key]]
            else:
                raise UserInputError(f"optimization.sampler 'grid' needs optimization.search_space.{key} to be "
                                     "categorical or to have a step.")
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def draw_index(study: Any, number: int) -> int:
    """How many draws came before trial `number`: the trials before it, less the interrupted or
    crashed ones (ended as failed without a result of their own; an interrupted one continues as an
    enqueued trial, which counts in its place)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number
               and not (t.state.name == "FAIL" and t.user_attrs.get("status") in (None, "interrupted")))


def seeded_per_draw(optuna: Any, cfg: WorkflowConfig) -> Any:
    """The configured sampler, seeded afresh for each draw from the training seed and the draw's
    index. The samplers are otherwise stateless (TPE recomputes from the study's history), so a
    sweep that is interrupted and resumed draws exactly what an uninterrupted one would have,
    and a restarted sweep does not repeat its first draws."""

    class DrawSeeded(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._by_trial: dict[int, Any] = {}

        def _for(self, study: Any, trial: Any) -> Any:
            if trial.number not in self._by_trial:
                seed = cfg.reproducibility.seed + 1_000_003 * draw_index(study, trial.number)
                self._by_trial[trial.number] = _sampler(optuna, cfg, seed)
            return self._by_trial[trial.number]

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._for(study, trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._for(study, trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            return self._for(study, trial).sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._for(study, trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._for(study, trial).after_trial(study, trial, state, values)
            self._by_trial.pop(trial.number, None)

        def reseed_rng(self) -> None:  # seeds come from the draw index, never from a clock
            pass

    return DrawSeeded()


def run_optimization(ctx: RunContext) -> RunOutput:
    """An LR range test, an Optuna study whose trials are runs of the shared trainer, the best trial
    and the baseline compared over seeds, and the optimized config."""
    try:
        import optuna
    except ImportError:
        raise UserInputError("`wf phase optimization` needs Optuna, which is not installed.",
                             hint="Install it with `pip install 'wf[tune]'` (the README's dev install includes it).") from None

    cfg, opt, say = ctx.cfg, ctx.cfg.optimization, ctx.on_message
    maximize = cfg.validation.mode == "max"
    data = build_data(cfg, ctx.project.root)
    facts: dict[str, Any] = {"run_dir": ctx.project.relative(ctx.run_dir), "metric": cfg.validation.metric,
                             "direction": "maximize" if maximize else "minimize"}
    study, shown_url, rule, objective = _sweep(optuna, ctx, data)  # first: a bad storage URL costs nothing
    trial_epochs = objective.trial_epochs
    if opt.lr_find:
        facts["lr_range_test"] = _lr_range_test(ctx, data)

    _requeue_abandoned_trials(optuna, study, ctx)
    held = sum(holds_a_slot(t) for t in study.get_trials(deepcopy=False))
    if held:
        say(f"Study {study.study_name}: {min(held, opt.n_trials)} of {opt.n_trials} trials run or running")
    try:
        if held < opt.n_trials:
            if opt.pruner == "median":
                say(f"Pruning: {rule.describe()}")
            run_trials(optuna, ctx, study, objective)
        _wait_for_other_workers(optuna, study, ctx, objective)
    except SubRunInterrupted as stop:
        return stop.output(ctx)
    trials = [_trial_row(t) for t in study.trials]
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
    facts["best"] = {"trial": best.number, "value": best.value, "params": best.params}
    facts["importance"] = _importance(optuna, study)
    try:
        facts["comparison"] = _compare_over_seeds(ctx, best.params, data)
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
                             hint="Install it with `pip install 'wf[tune]'`.") from None
    study, _, _, objective = _sweep(optuna, ctx, build_data(ctx.cfg, ctx.project.root))
    _requeue_abandoned_trials(optuna, study, ctx)
    ran = run_trials(optuna, ctx, study, objective)
    return ran, sum(holds_a_slot(t) for t in study.get_trials(deepcopy=False))


def _sweep(optuna: Any, ctx: RunContext, data: Any) -> tuple[Any, str, PruningRule, TrialObjective]:
    """The study (opened or created), the storage as reports show it, the pruning rule, and the
    objective that runs a trial: what the final step and every worker share."""
    cfg, opt = ctx.cfg, ctx.cfg.optimization
    trial_epochs = opt.trial_epochs or cfg.training.epochs
    rule = pruning_rule(opt, trial_epochs, cfg.validation.metric, len(data.val), cfg.validation.mode == "max")
    pruner = build_pruner(optuna, rule) if opt.pruner == "median" else optuna.pruners.NopPruner()
    study, shown_url = _open_study(optuna, ctx, pruner)
    if ctx.tracking is not None:  # every trial's MLflow run names its study (workers' too)
        ctx.tracking.training_tags["wf.study"] = study.study_name
    return study, shown_url, rule, TrialObjective(optuna, ctx, study, data, trial_epochs, pruner)


def _open_study(optuna: Any, ctx: RunContext, pruner: Any) -> tuple[Any, str]:
    """The study in its storage (created, or continued), and the storage as reports may show it."""
    cfg, opt = ctx.cfg, ctx.cfg.optimization
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(ctx)
    shown_url = "sqlite:///.wf/optuna.db" if opt.storage is None else redacted(url)  # reports are committed
    try:
        # under the claim lock: workers starting together on a fresh database would each create its tables
        with claim_lock(url, study_name(cfg), lock_file_for(url, ctx.project.root)):
            storage = open_storage(optuna, url, ctx.project.root)
            study = optuna.create_study(study_name=study_name(cfg), storage=storage, load_if_exists=True,
                                        sampler=seeded_per_draw(optuna, cfg), pruner=pruner,
                                        direction="maximize" if cfg.validation.mode == "max" else "minimize")
    except UserInputError:
        raise
    except Exception as exc:  # a bad URL, an unreachable server, a missing driver
        raise UserInputError(f"optimization.storage {shown_url!r}: cannot open the Optuna study ({exc}).") from None
    return study, shown_url


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
            return trial.should_prune()

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


def _compare_over_seeds(ctx: RunContext, params: dict[str, Any], data: Any) -> dict[str, Any]:
    """The baseline config and the best trial's, each trained with `optimization.seeds` seeds, compared
    by a one-sided Welch t-test on the best validation metric."""
    cfg, opt = ctx.cfg, ctx.cfg.optimization
    rebuild = searches_data(cfg)
    seeds = [cfg.reproducibility.seed + i for i in range(opt.seeds)]
    runs: dict[str, list[float]] = {"baseline": [], "optimized": []}
    for label, changes in (("baseline", {}), ("optimized", params)):
        for seed in seeds:
            ctx.on_message(f"Comparison: {label} config, seed {seed}")
            run_cfg = with_changes(cfg, {**changes, "reproducibility.seed": seed})
            run_dir = ctx.run_dir / "comparison" / f"{label}_seed{seed}"
            result = fit_or_continue(ctx, run_cfg, run_dir, f"{ctx.run_id}/{label}_seed{seed}",
                                     phase="optimization", data=None if rebuild and changes else data)
            value = result.record.best.value if result.record.best else None
            runs[label].append(float(value) if value is not None else math.nan)
    return compare(runs["baseline"], runs["optimized"], seeds, cfg.validation.mode == "max", opt.significance,
                   cfg.validation.metric)


def _requeue_abandoned_trials(optuna: Any, study: Any, ctx: RunContext) -> None:
    """Trials of this project still marked running whose process is gone were killed (kill -9,
    power loss). Each is ended as failed and enqueued again with its values, and continues from its
    own checkpoint under `--resume`. Trials of live workers, and of other machines, are left alone."""
    waiting = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False,
                                                                          states=(optuna.trial.TrialState.WAITING,))}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not owner_is_gone(trial.user_attrs.get("owner"), ctx.project.root):
            continue
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        if json.dumps(trial.params, sort_keys=True) not in waiting:
            study.enqueue_trial(trial.params, user_attrs={"continues": trial.user_attrs.get("run_dir")})
        ctx.on_message(f"Trial {trial.number} was left running by a killed process: enqueued again")


def run_trials(optuna: Any, ctx: RunContext, study: Any, objective: TrialObjective) -> int:
    """Trials of the study, one claimed at a time (trial_slots.py), until it holds
    optimization.n_trials of them or optimization.timeout_s has passed; how many this process ran."""
    opt, ran, started = ctx.cfg.optimization, 0, time.monotonic()
    url = storage_url(ctx)
    lock = lock_file_for(url, ctx.project.root)
    while opt.timeout_s is None or time.monotonic() - started < opt.timeout_s:
        with claim_lock(url, study.study_name, lock):
            if sum(holds_a_slot(t) for t in study.get_trials(deepcopy=False)) >= opt.n_trials:
                break
            trial = study.ask()
        ran += 1
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        except BaseException:  # interrupted (enqueued again by the objective), or a crash: said by wf
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        if math.isfinite(value):
            study.tell(trial, value)
        else:  # a NaN run: failed, and said so by the objective
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return ran


WAIT_FOR_WORKERS_S = 10.0  # how often the final step looks again at trials other workers are running


def _wait_for_other_workers(optuna: Any, study: Any, ctx: RunContext, objective: TrialObjective) -> None:
    """The comparison waits for the trials other workers are still running: it compares the best of
    all of them. Trials of a dead process of this machine are enqueued again, not waited for."""
    said: set[int] = set()
    while True:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        _requeue_abandoned_trials(optuna, study, ctx)
        for t in running:
            if t.number not in said:
                said.add(t.number)
                owner = (t.user_attrs.get("owner") or "another process").split(":")[0]
                ctx.on_message(f"Waiting for trial {t.number}, running on {owner}")
        if any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False)):
            run_trials(optuna, ctx, study, objective)  # a dead worker's trial, continued here
            continue
        time.sleep(WAIT_FOR_WORKERS_S)


def _trial_row(t: Any) -> dict[str, Any]:
    value = t.value if t.value is not None and math.isfinite(t.value) else None
    return {"number": t.number, "state": t.state.name, "value": value, "params": t.params,
            "status": t.user_attrs.get("status"), "epochs": t.user_attrs.get("epochs"),
            "duration_s": t.user_attrs.get("duration_s"), "run_dir": t.user_attrs.get("run_dir"),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}}


IMPORTANCE_MIN_TRIALS = 10  # PED-ANOVA compares the best 10 % of the trials with the rest


def _importance(optuna: Any, study: Any) -> dict[str, float] | None:
    """PED-ANOVA's importance of each parameter (named, not left to Optuna's default, which has
    changed between versions); None when the trials are too few to rank the parameters."""
    import warnings

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) < IMPORTANCE_MIN_TRIALS:
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ImportError):  # too few distinct trials, or one parameter only
        return None
    if any("select the same set of trials" in str(w.message) for w in caught):
        return None  # too few trials: every parameter would get the same importance
    return {k: round(float(v), 4) for k, v in values.items()}


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
