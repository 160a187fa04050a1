"""Named checks over recorded evidence. Checklist auto items and phase success criteria both name
these. A check returns a verdict and a reason; it never acts. None of them imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow_core.errors import ConfigError
from mlflow_core.workflow import noise
from mlflow_core.workflow.datafiles import stat_cache
from mlflow_core.workflow.evidence import Evidence, file_sha256
from mlflow_core.workflow.noise import mcc_beyond_chance
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import ProjectState
from mlflow_core.workflow.units import percent

if TYPE_CHECKING:
    from mlflow_core.workflow.facts import FileRef


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str


@dataclass
class CheckContext:
    project: Project
    state: ProjectState
    phase: str  # the phase whose evidence the check reads
    evidence: Evidence | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def facts(self) -> Any:
        """The phase's facts model (workflow/facts.py): run_check reads them only when intact."""
        return self.evidence.facts if self.evidence else None


CheckFn = Callable[[CheckContext], CheckResult]
CHECKS: dict[str, CheckFn] = {}
# check → the name of the facts model it reads (the phases' models are built only when evidence is read);
# absent: any phase's (a report, a decision)
READS: dict[str, str] = {}


def check(name: str, reads: str | None = None) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS[name] = fn
        if reads is not None:
            READS[name] = reads
        return fn
    return register


def applies(name: str, facts_name: str) -> bool:
    """Whether check `name` can judge a phase that records the facts model named `facts_name` (a setup
    check cannot judge a training run's evidence)."""
    reads = READS.get(name)
    return reads is None or reads == facts_name


def run_check(name: str, ctx: CheckContext) -> CheckResult:
    if ctx.evidence is None:
        return CheckResult(False, f"no evidence recorded yet; run `wf phase {ctx.phase}`")
    if not ctx.evidence.intact:
        return CheckResult(False, f".wf/evidence/{ctx.phase}.json {ctx.evidence.why_not_intact()}; "
                           f"run `wf phase {ctx.phase}` again")
    run = ctx.state.run(ctx.evidence.run_id) if ctx.evidence.run_id else None
    if run is not None and run.summary.get("evidence_sha256") not in (None, ctx.evidence.sha256):
        return CheckResult(False, f"evidence does not match run {run.run_id} in state.json; "
                           f"run `wf phase {ctx.phase}` again")
    return CHECKS[name](ctx)


# --- setup -----------------------------------------------------------------------------------------

@check("config_valid", reads="SetupFacts")
def _config_valid(ctx: CheckContext) -> CheckResult:
    """The config validates now. Whether it is still the config the gate verified is the gate's
    fingerprint comparison (gates.py), which knows when a later gate approved another one."""
    path = ctx.project.config_path
    recorded = ctx.facts.config_sha256
    try:
        current = file_sha256(path)
    except OSError as exc:
        return CheckResult(False, f"{path.name} cannot be read ({exc.strerror})")
    if recorded == current:  # the very bytes setup validated: no need to build the schema again
        return CheckResult(True, f"valid; sha256 {recorded[:12]} verified by setup")
    from mlflow_core.config.loader import load_config  # the schema's models: only when the bytes changed

    try:
        load_config(path)
    except ConfigError as exc:
        return CheckResult(False, f"{exc.problems[0]} (and {len(exc.problems) - 1} more)"
                           if len(exc.problems) > 1 else exc.problems[0])
    return CheckResult(True, f"valid (sha256 {current[:12]}; setup verified {str(recorded)[:12]})")


@check("environment_documented", reads="SetupFacts")
def _environment(ctx: CheckContext) -> CheckResult:
    return _artifact_present(ctx, ctx.facts.environment.report, "environment report")


@check("seeds_fixed", reads="SetupFacts")
def _seeds(ctx: CheckContext) -> CheckResult:
    seeds = ctx.facts.seeds
    return CheckResult(True, f"seed {seeds.seed} applied to {', '.join(seeds.seeded)}; "
                       f"deterministic={seeds.deterministic}")


@check("reproducibility_verified", reads="SetupFacts")
def _reproducible(ctx: CheckContext) -> CheckResult:
    rep = ctx.facts.reproducibility
    difference = "bit-identical" if rep.identical else f"max |Δw| = {rep.max_abs_diff:.3g}"
    return CheckResult(rep.passed, f"{rep.steps} steps twice on {rep.device}: {difference}")


@check("data_pipeline_ok", reads="SetupFacts")
def _data(ctx: CheckContext) -> CheckResult:
    data = ctx.facts.data
    if data.problems:
        return CheckResult(False, "; ".join(data.problems))
    return CheckResult(True, f"train {data.train_size}, val {data.val_size}, input "
                       f"{data.input_shape}, {data.num_classes} classes, no NaN/Inf, no sample in two splits "
                       f"({data.overlap_coverage()})")


@check("model_forward_ok", reads="SetupFacts")
def _model(ctx: CheckContext) -> CheckResult:
    model = ctx.facts.model
    if not model.ok:
        return CheckResult(False, model.error or "model forward pass failed")
    return CheckResult(True, f"{model.name}: {model.parameters:,} parameters, output {model.output_shape}")


# --- baseline and later training phases -----------------------------------------------------------

@check("run_completed", reads="TrainingFacts")
def _completed(ctx: CheckContext) -> CheckResult:
    status = ctx.facts.status
    ok = status in ("completed", "early_stopped")
    return CheckResult(ok, f"run {ctx.evidence.run_id if ctx.evidence else '?'} status: {status}")


@check("loss_decreased", reads="TrainingFacts")
def _loss_decreased(ctx: CheckContext) -> CheckResult:
    f = ctx.facts
    first, best = f.first_epoch_train_loss, f.best_train_loss
    if first is None or best is None:
        return CheckResult(False, "fewer than one finished epoch recorded")
    if f.epochs_completed < 2:
        return CheckResult(False, "needs at least two epochs to compare")
    fall = 1 - best / first if first > 0 else 0.0
    shown = f"train loss {first:.4g} (epoch 1) → best {best:.4g} (−{percent(fall)})" if fall > 0 else \
        f"train loss {first:.4g} (epoch 1) → best {best:.4g}"
    if fall < MIN_LOSS_FALL:
        return CheckResult(False, f"{shown}: a fall under {percent(MIN_LOSS_FALL)} does not show learning")
    return CheckResult(True, shown)


MIN_LOSS_FALL = 0.05  # the training loss must fall by this share of its first epoch's mean


@check("beats_chance", reads="TrainingFacts")
def _beats_chance(ctx: CheckContext) -> CheckResult:
    """The model learned: at its best epoch, the validation MCC stands out of the noise of a predictor
    that learned nothing (MCC 0 for any constant or label-independent predictor, whatever the class
    balance), on the run's own validation split. A falling loss alone does not show it: a run at
    learning rate 1e6 falls from 1e12 to 1e10 and predicts at chance."""
    f = ctx.facts
    figures, chance = f.best_validation or {}, f.chance
    mcc, accuracy = figures.get("val_mcc"), figures.get("val_accuracy")
    if chance is None or not isinstance(mcc, float | int):
        return CheckResult(False, "no validation figures against a trivial predictor were recorded (by an earlier "
                           f"wf, or no epoch was validated); run `wf phase {ctx.phase}` again")
    weighed = mcc_beyond_chance(float(mcc), chance.count)
    epoch = f.best.epoch if f.best else "?"
    against = (f"val accuracy {percent(float(accuracy))} against {percent(chance.majority_share)} for always "
               "predicting the majority class" if isinstance(accuracy, float | int) else "")
    shown = (f"best epoch {epoch}: val MCC {float(mcc):.3f}, a predictor that learned nothing scores 0 ± "
             f"{weighed.noise:.3f} over {chance.count:,} {chance.units}; {against}")
    if not weighed.stands_out:
        return CheckResult(False, f"{shown}: not above chance by more than {noise.Z:g} standard errors "
                           f"(needs MCC > {weighed.smallest:.3f}); see diagnostics/convergence_stall.md")
    return CheckResult(True, shown)


@check("no_nan_loss", reads="TrainingFacts")
def _no_nan(ctx: CheckContext) -> CheckResult:
    nan = ctx.facts.nonfinite
    if nan:
        return CheckResult(False, f"non-finite {nan.what} at step {nan.step} (epoch {nan.epoch}); "
                           "see diagnostics/nan_loss.md")
    return CheckResult(True, f"all {ctx.facts.steps} steps finite")


@check("best_checkpoint_saved", reads="TrainingFacts")
def _best_ckpt(ctx: CheckContext) -> CheckResult:
    best = ctx.facts.checkpoints.best
    if not best:
        return CheckResult(False, "no best checkpoint recorded")
    path = ctx.project.root / best.path
    # checkpoints are git-ignored: where the file is (the machine that trained), it must be the one
    # recorded; where it is not (a CI checkout), its recorded checksum is what there is to show
    if path.is_file():

        cache = stat_cache(ctx.project.root, "files")
        digest = cache.sha256(path)
        cache.save()
        if digest != best.sha256:
            return CheckResult(False, f"{best.path} changed after the run wrote it (sha256 {digest[:12]}, "
                               f"recorded {best.sha256[:12]}); run `wf phase {ctx.phase}` again")
        where = "verified"
    else:
        where = "not on this machine; recorded"
    return CheckResult(True, f"{best.path} (epoch {best.epoch}, sha256 {best.sha256[:12]} {where})")


@check("report_generated")
def _report(ctx: CheckContext) -> CheckResult:
    return _artifact_present(ctx, ctx.facts.report, "report")


@check("gpu_utilization", reads="TrainingFacts")
def _gpu(ctx: CheckContext) -> CheckResult:
    gpu = ctx.facts.gpu
    target = float(ctx.params.get("min_percent", 60))
    if not gpu:
        return CheckResult(False, "GPU utilization was not recorded")
    if not gpu.available:
        return CheckResult(True, f"no GPU present ({gpu.reason or 'unknown'}); not applicable")
    if ctx.facts.device.startswith("cpu"):
        return CheckResult(True, "trained on the CPU (training.device); not applicable")
    median = gpu.p50
    if median is None:
        return CheckResult(False, "no utilization samples recorded")
    ok = median > target
    return CheckResult(ok, f"median {median:.0f} % (mean {gpu.mean or 0:.0f} %), target > {target:.0f} %"
                       + ("" if ok else "; see diagnostics/resource_inefficiency.md"))


@check("decision_recorded")
def _decision(ctx: CheckContext) -> CheckResult:
    """A decision made in this phase on the run the gate judges (the latest one recorded there: the
    current decision, or the one that led on from an earlier pass through this phase)."""
    decision = ctx.state.decision_in(ctx.phase)
    if decision is None:
        from mlflow_core.workflow.phases import DECISIONS, load_phase

        leads_to = load_phase(ctx.phase, ctx.project.root).next
        verbs = "|".join(v for v, p in DECISIONS.items() if p in leads_to)
        return CheckResult(False, f"no decision recorded; run `wf decide {verbs} --reason \"…\"`")
    judged = ctx.evidence.run_id if ctx.evidence else None
    if judged is not None and getattr(decision, "after_run", None) != judged:
        return CheckResult(False, f"the decision was made on run {getattr(decision, 'after_run', '?')}, not on "
                           f"run {judged} that the gate judges; run `wf decide` again")
    reason = f" ({decision.reason})" if getattr(decision, "reason", None) else ""
    return CheckResult(True, f"{decision.choice} → {decision.next_phase}{reason}")


# --- diagnostics ------------------------------------------------------------------------------------

CONFIG_FIXABLE = {"lr_too_high", "amp_overflow", "lr_too_low", "died_in_training", "unnormalized_inputs"}  # a trial can verify


NOTHING_TO_FIX_NEXT = ("tick `fix_applied` to confirm that none is needed, then `wf decide optimize --reason "
                      "\"nothing to fix\"` (or `wf decide rebaseline` to train the baseline again)")


@check("root_cause_identified", reads="DiagnosticsFacts")
def _root_cause(ctx: CheckContext) -> CheckResult:
    from mlflow_core.workflow.facts.diagnostics import ROOT_CAUSE_CONFIDENCE  # loaded with the evidence read

    facts, top = ctx.facts, ctx.facts.top_finding()
    outcome = facts.concluded()
    if outcome == "nothing_to_fix":
        return CheckResult(True, f"nothing to fix: run {facts.diagnosed_run} met its success criteria and no "
                           f"diagnostic found a problem (what each could see is in the report); {NOTHING_TO_FIX_NEXT}")
    if top is None:
        return CheckResult(False, f"no finding in run {facts.diagnosed_run}, although it did not meet its success "
                           "criteria: no diagnostic explains it. Run one by name (`wf diagnose --help` lists them), or go on "
                           "without a cause on the record: `wf checklist waive post_diagnostics "
                           "root_cause_identified --reason \"…\"`")
    ok = outcome == "cause_found"
    return CheckResult(ok, f"`{top.cause}` ({top.diagnostic}, confidence {top.confidence:.2f}"
                       + ("" if ok else f", below {ROOT_CAUSE_CONFIDENCE}") + ")")


@check("fix_verified", reads="DiagnosticsFacts")
def _fix_verified(ctx: CheckContext) -> CheckResult:
    if ctx.facts.concluded() == "nothing_to_fix":
        return CheckResult(True, f"nothing to fix in run {ctx.facts.diagnosed_run}, so no fix to verify")
    fix = ctx.facts.verified_fix
    if fix:
        return CheckResult(True, f"a trial run verified: {fix} ({ctx.facts.suggested_config})")
    top = ctx.facts.top_finding()
    if top is not None and top.cause not in CONFIG_FIXABLE:
        # no trial ran, so nothing verified a fix: never ✔ here; a person vouches for it on the record
        return CheckResult(False, f"no trial run verified a fix: `{top.cause}` is fixed in the data or the code, "
                           "not by a config trial. Once it is fixed, tick fix_applied and put the fix on the record: "
                           "`wf checklist waive post_diagnostics fix_verified --reason \"fixed in …\"`")
    return CheckResult(False, "no trial run removed the symptom; see the report's fix trials")


def _artifact_present(ctx: CheckContext, record: FileRef | None, what: str) -> CheckResult:
    if not record:
        return CheckResult(False, f"no {what} recorded")
    path = ctx.project.root / record.path
    if not path.is_file():
        return CheckResult(False, f"{record.path} is missing; run `wf report {ctx.phase}` to render it again")
    if file_sha256(path) != record.sha256:
        return CheckResult(False, f"{record.path} was edited after wf wrote it; "
                           f"run `wf report {ctx.phase}` to render it again")
    return CheckResult(True, f"{record.path} (sha256 {record.sha256[:12]})")


# --- optimization -----------------------------------------------------------------------------------

@check("trials_completed", reads="OptimizationFacts")
def _trials_completed(ctx: CheckContext) -> CheckResult:
    study = ctx.facts.study
    done = study.counts.get("COMPLETE", 0)
    return CheckResult(done > 0, f"{done} completed, {study.counts.get('PRUNED', 0)} pruned, "
                       f"{study.counts.get('FAIL', 0)} failed in study {study.name}")


@check("improvement_significant", reads="OptimizationFacts")
def _improvement(ctx: CheckContext) -> CheckResult:
    comparison = ctx.facts.comparison
    if not comparison:
        return CheckResult(False, "no comparison with the baseline was recorded (no trial completed)")
    return CheckResult(comparison.significant, comparison.verdict)


@check("improvement_judged", reads="OptimizationFacts")
def _improvement_judged(ctx: CheckContext) -> CheckResult:
    """The sweep's outcome, either way: a gain beyond the seed noise (finalize the optimized config) or
    none (finalize the baseline's); only a sweep with no comparison has no outcome."""
    comparison = ctx.facts.comparison
    if not comparison:
        return CheckResult(False, "no comparison with the baseline was recorded (no trial completed)")
    if comparison.significant:
        return CheckResult(True, f"{comparison.verdict}; finalize the optimized config (copy "
                           "configs/optimized_config.yaml over training_config.yaml, tick chosen_config_committed)")
    return CheckResult(True, f"{comparison.verdict}: the baseline's config stays; "
                       "keep training_config.yaml as it is, tick chosen_config_committed, then "
                       "`wf phase finalization`")


@check("optimized_config_written", reads="OptimizationFacts")
def _optimized_config(ctx: CheckContext) -> CheckResult:
    return _artifact_present(ctx, ctx.facts.optimized_config, "optimized config")


# --- finalization -----------------------------------------------------------------------------------

@check("test_evaluated_once", reads="FinalizationFacts")
def _test_once(ctx: CheckContext) -> CheckResult:
    facts = ctx.facts
    accuracy = (facts.summary or {}).get("accuracy")
    if accuracy is None:
        return CheckResult(False, "no final run was evaluated on the test split")
    before = facts.test_split.evaluated_before_by
    shown = (f"test accuracy {accuracy.mean * 100:.2f} ± {accuracy.std * 100:.2f} % over {len(accuracy.values)} "
             "final model(s)")
    if before:
        return CheckResult(False, f"{shown}, but the test split was already evaluated by {', '.join(map(str, before))}: "
                           "choices made after seeing it are not held out")
    return CheckResult(True, f"{shown}; first evaluation of the test split")


@check("export_verified", reads="FinalizationFacts")
def _export_verified(ctx: CheckContext) -> CheckResult:
    exports = ctx.facts.exports
    if not exports:
        return CheckResult(False, "nothing was exported")
    failed = [(e.kind, e.detail) for e in exports if not e.verified]
    for e in exports:
        if e.path and e.verified:
            path = ctx.project.root / e.path
            if not path.is_file() or file_sha256(path) != e.sha256:
                failed.append((e.kind, "changed or missing since it was verified"))
    if failed:
        return CheckResult(False, "; ".join(f"{kind}: {detail}" for kind, detail in failed))
    return CheckResult(True, ", ".join(f"{e.kind} ({e.max_abs_diff or 0:.2g})" for e in exports))
