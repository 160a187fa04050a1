"""The Optuna study of `wf phase optimization`: its name and storage, the sampler that draws the
same trials on every machine, trials claimed one at a time (trial_slots.py) and ended honestly,
trials of killed processes enqueued again, and what the study says afterwards (its rows, the
parameters' importance). Every function takes `optuna` as imported by its caller (an optional
dependency)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from mlflow_core.config.phase_settings import SearchParameter
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import UserInputError
from mlflow_core.runners import RunContext
from mlflow_core.runners.trial_slots import (
    claim_lock,
    holds_a_slot,
    lock_file_for,
    open_storage,
    owner_is_gone,
)


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


def sampler(optuna: Any, cfg: WorkflowConfig, seed: int) -> Any:
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
                self._by_trial[trial.number] = sampler(optuna, cfg, seed)
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


def open_study(optuna: Any, ctx: RunContext, pruner: Any) -> tuple[Any, str]:
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


def requeue_abandoned_trials(optuna: Any, study: Any, ctx: RunContext) -> None:
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


def run_trials(optuna: Any, ctx: RunContext, study: Any, objective: Callable[[Any], float]) -> int:
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
        told = getattr(objective, "told", lambda _trial, _state: None)  # e.g. the trial's MLflow run tagged
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            told(trial, "PRUNED")
            continue
        except BaseException:  # interrupted (enqueued again by the objective), or a crash: said by wf
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            told(trial, "FAIL")
            raise
        if math.isfinite(value):
            study.tell(trial, value)
            told(trial, "COMPLETE")
        else:  # a NaN run: failed, and said so by the objective
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            told(trial, "FAIL")
    return ran


WAIT_FOR_WORKERS_S = 10.0  # how often the final step looks again at trials other workers are running


def wait_for_other_workers(optuna: Any, study: Any, ctx: RunContext, objective: Callable[[Any], float]) -> None:
    """The comparison waits for the trials other workers are still running: it compares the best of
    all of them. Trials of a dead process of this machine are enqueued again, not waited for."""
    said: set[int] = set()
    while True:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        requeue_abandoned_trials(optuna, study, ctx)
        for t in running:
            if t.number not in said:
                said.add(t.number)
                owner = (t.user_attrs.get("owner") or "another process").split(":")[0]
                ctx.on_message(f"Waiting for trial {t.number}, running on {owner}")
        if any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False)):
            run_trials(optuna, ctx, study, objective)  # a dead worker's trial, continued here
            continue
        time.sleep(WAIT_FOR_WORKERS_S)


def trial_row(t: Any) -> dict[str, Any]:
    value = t.value if t.value is not None and math.isfinite(t.value) else None
    return {"number": t.number, "state": t.state.name, "value": value, "params": t.params,
            "status": t.user_attrs.get("status"), "epochs": t.user_attrs.get("epochs"),
            "duration_s": t.user_attrs.get("duration_s"), "run_dir": t.user_attrs.get("run_dir"),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}}


IMPORTANCE_MIN_TRIALS = 10  # PED-ANOVA compares the best 10 % of the trials with the rest


def importance(optuna: Any, study: Any) -> dict[str, float] | None:
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
