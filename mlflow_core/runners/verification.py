"""`wf verify`'s recomputation, phase by phase: which runs each phase's evidence claims from and what
else it claims (setup's checks, the diagnosis, the sweep's comparison, the export). Each training
run's own claims are runners/run_claims.py; the verdicts and the torch-free claims are
workflow/verification.py."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlflow_core.config.loader import load_config
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.runners.run_claims import RunClaims, verify_run, weights_digest
from mlflow_core.runners.setup import check_setup_data
from mlflow_core.training.checkpoint import load_checkpoint, weights_sha256
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.models import build_model, count_parameters
from mlflow_core.training.optim import resolve_device
from mlflow_core.training.trainer import Trainer
from mlflow_core.workflow.evidence import archived_evidence_path, file_sha256, read_evidence
from mlflow_core.workflow.facts import (
    DiagnosticsFacts,
    FinalizationFacts,
    OptimizationFacts,
    SetupFacts,
    TrainingFacts,
)
from mlflow_core.workflow.fingerprints import flatten, vouched
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.verification import PhaseVerification, config_difference, expected_config


def import_training_stack() -> None:
    """What every process that trains imports once: torch (above), and TorchDynamo, which the first
    optimizer built imports (torch._compile; 1.4 s on 2 cores). Imported before a verification is
    timed, so that its duration is the recomputation's own."""
    import torch._dynamo  # noqa: F401


def verify_training(project: Project, facts: TrainingFacts, run_id: str | None, out: PhaseVerification, *,
                    segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                    label: str = "", files: Any = None) -> None:
    """A training phase's run (the baseline): its best checkpoint and, from the states it kept, its training."""
    recorded = (facts.fingerprints.config.get("values") if facts.fingerprints else None) or {}
    run = RunClaims(label, facts.run_dir, recorded, facts.checkpoints.best, facts.weights or {}, facts.replay,
                    facts.best_validation or {}, "validation", run_id=run_id,
                    chance=facts.chance.model_dump(mode="json") if facts.chance else None)
    verify_run(project, run, out, segments=segments, rng=rng, on_message=on_message, files=files)


def verify_diagnostics(project: Project, facts: DiagnosticsFacts, state: Any, out: PhaseVerification, *,
                       segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                       files: Any = None) -> None:
    """The diagnosis made again on the run it diagnosed (every diagnostic, the fix trials), without
    writing anything: the same findings, the same verified fix, the same outcome. The diagnosed run's
    record (metrics.json) must be the one its evidence names, and its training recomputes too."""
    from mlflow_core.diagnostics.engine import diagnose_run

    name = f"the diagnosed run {facts.diagnosed_run}"
    run = state.run(facts.diagnosed_run)
    evidence = read_evidence(project, "baseline", archived_evidence_path(project, facts.diagnosed_run))
    if run is None or evidence is None or not evidence.intact:
        out.add(name, "unverifiable", "its run record or its evidence (.wf/evidence/runs/) is not in this project")
        return
    metrics = project.inside(evidence.facts.metrics.path)
    if not metrics.is_file():
        out.add(name, "unverifiable", f"{evidence.facts.metrics.path} is not on this machine")
        return
    if file_sha256(metrics) != evidence.facts.metrics.sha256:
        out.add(name, "failed", f"{evidence.facts.metrics.path} is not the record its evidence names (sha256 differs)")
        return
    current = read_evidence(project, "baseline")
    if current is None or current.run_id != facts.diagnosed_run:  # the current baseline is verified as baseline
        verify_training(project, evidence.facts, facts.diagnosed_run, out, segments=segments, rng=rng,
                        on_message=on_message, label="diagnosed run: ", files=files)
    on_message(f"Diagnosing {facts.diagnosed_run} again, with the fix trials")
    again = diagnose_run(project, "auto", run, fix=True, on_message=on_message, write=False).to_json()

    def shown(findings: list[Any]) -> list[tuple[str, str, float]]:
        return [(f["diagnostic"], f["cause"], round(float(f["confidence"]), 6)) for f in findings]

    claimed = facts.diagnosis.model_dump(mode="json")
    differences = []
    if shown(again["findings"]) != shown(claimed["findings"]):
        differences.append(f"findings {shown(again['findings'])[:3]} (recorded {shown(claimed['findings'])[:3]})")
    fix = next((t["label"] for t in again["trials"] if t.get("winner")), None)
    if fix != facts.verified_fix:
        differences.append(f"verified fix {fix!r} (recorded {facts.verified_fix!r})")
    if differences:
        out.add("diagnosis", "failed", "diagnosed again: " + "; ".join(differences))
    else:
        top = again["findings"][0] if again["findings"] else None
        out.add("diagnosis", "verified", "diagnosed again: " + (f"`{top['cause']}` ({top['diagnostic']}, confidence "
                f"{top['confidence']:.2f})" if top else "no finding") + (f"; fix verified by a trial: {fix}" if fix
                else "") + f"; {len(again['trials'])} trial(s)")


def verify_finalization(project: Project, facts: FinalizationFacts, run_id: str | None, out: PhaseVerification, *,
                        segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                        files: Any = None) -> None:
    """Each final member's best checkpoint evaluated again on the test split, its training replayed,
    and the exported weights those of the member the evidence says was exported."""
    recorded = (facts.fingerprints.config.get("values") if facts.fingerprints else None) or {}
    differs = config_difference(recorded, flatten(facts.config))
    if differs is not None:
        out.add("config", "failed", f"the evidence's config and its fingerprint disagree: {differs}")
        return
    bundle = None
    exported: dict[int, str] = {}
    tta = tuple(facts.config.get("finalization", {}).get("tta") or ())
    for member in facts.seeds:
        label = f"seed {member.seed}: " if member.fold is None else f"fold {member.fold} seed {member.seed}: "
        if member.test is None:
            continue  # did not complete: nothing was claimed of it
        if member.fold is not None or member.proof is None or member.run_dir is None:
            why = ("cross-validation members are not recomputed yet" if member.fold is not None else
                   "the evidence records nothing to recompute it from (an earlier wf)")
            out.add(f"{label}training and test figures", "unverifiable", why)
            continue
        config = expected_config(recorded, {"reproducibility.seed": member.seed, "training.epochs": facts.epochs})
        run = RunClaims(label, member.run_dir, config, member.proof.best, member.proof.weights or {},
                        member.proof.replay, member.test, "test", tta, run_id=f"{run_id}/seed_{member.seed}")
        work = verify_run(project, run, out, segments=segments, rng=rng, on_message=on_message, bundle=bundle,
                          files=files)
        bundle = work.bundle
        if work.best_weights is not None:
            exported[member.seed] = work.best_weights
    _verify_export(project, facts, exported, out)


def verify_optimization(project: Project, facts: OptimizationFacts, run_id: str | None, out: PhaseVerification, *,
                        segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                        files: Any = None) -> None:
    """The sweep's conclusion: each comparison run's best value recomputed (its best checkpoint
    evaluated again, its training replayed), the one-sided Welch t-test computed again from those
    values, and the best trial's value, on which the optimized config rests."""
    from mlflow_core.runners.optimization import compare

    recorded = (facts.fingerprints.config.get("values") if facts.fingerprints else None) or {}
    comparison, best, metric = facts.comparison, facts.best, facts.metric
    if comparison is None or best is None:
        out.add("comparison", "verified", "no trial completed, so the sweep claims no comparison")
        return
    bundle = None
    if not comparison.runs:
        out.add("comparison runs", "unverifiable", "the evidence records nothing to recompute them from (an earlier wf)")
    else:
        for run in comparison.runs:
            changes = {**(best.params if run.label == "optimized" else {}), "reproducibility.seed": run.seed}
            expected, trained_as = expected_config(recorded, changes), f"{run_id}/{run.label}_seed{run.seed}"
            if run.reused:  # the recorded baseline run stood for it: its own config, if it trained the same
                expected = _reused_config(project, run, expected, out)
                if expected is None:
                    continue
                trained_as = run.reused
            claims = RunClaims(f"{run.label} seed {run.seed}: ", run.run_dir, expected,
                               run.proof.best if run.proof else None, (run.proof.weights if run.proof else None) or {},
                               run.proof.replay if run.proof else None, {metric: run.value}, "validation",
                               run_id=trained_as)
            bundle = verify_run(project, claims, out, segments=segments, rng=rng, on_message=on_message,
                                bundle=bundle, files=files).bundle
        listed = {(r.label, r.seed): r.value for r in comparison.runs}
        agree = all(listed.get(("baseline", s)) == v for s, v in zip(comparison.seeds, comparison.baseline)) and all(
            listed.get(("optimized", s)) == v for s, v in zip(comparison.seeds, comparison.optimized))
        again = compare(comparison.baseline, comparison.optimized, comparison.seeds, facts.direction == "maximize",
                        comparison.alpha, metric)
        if not agree or again["significant"] != comparison.significant or again["p_value"] != comparison.p_value:
            out.add("comparison", "failed", f"computed again from the runs' values: {again['verdict']}; the evidence "
                    f"says: {comparison.verdict}" + ("" if agree else " (and lists other values than its runs')"))
        else:
            out.add("comparison", "verified", f"the one-sided Welch t-test computed again from the runs' values: "
                    f"{again['verdict']}")
    trial_epochs = facts.study.trial_epochs
    if best.proof is None or best.run_dir is None:
        out.add(f"best trial {best.trial}", "unverifiable", "its run is not on this machine (a sweep worker's) or "
                "the evidence records nothing to recompute it from")
        return
    changes = {**best.params, "training.epochs": trial_epochs, "checkpointing.checkpoint_every_n_epochs": 0}
    claims = RunClaims(f"best trial {best.trial}: ", best.run_dir, expected_config(recorded, changes),
                       best.proof.best, best.proof.weights or {}, best.proof.replay, {metric: best.value}, "validation",
                       run_id=f"{run_id}/{Path(best.run_dir).name}")
    verify_run(project, claims, out, segments=segments, rng=rng, on_message=on_message, bundle=bundle,
               files=files)
    _verify_optimized_config(project, facts, out)


def _reused_config(project: Project, run: Any, expected: dict[str, Any], out: PhaseVerification) -> dict[str, Any] | None:
    """The config of the baseline run a comparison reused: the baseline evidence's, when that
    evidence judged that run and its config changes no weight of the comparison's (the phases'
    sections and the trackers aside); else the claim fails and None is returned."""
    label = f"{run.label} seed {run.seed}: reused run"
    evidence = read_evidence(project, "baseline")
    if evidence is not None and evidence.run_id != run.reused:  # a later baseline: that run's archived copy
        evidence = read_evidence(project, "baseline", archived_evidence_path(project, run.reused))
    if evidence is None or not evidence.intact or evidence.run_id != run.reused or evidence.facts.fingerprints is None:
        out.add(label, "failed", f"the evidence names the baseline run {run.reused}, which the baseline's evidence "
                "does not record")
        return None
    own = evidence.facts.fingerprints.config.get("values") or {}
    if vouched(own, "baseline") != vouched(expected, "baseline"):
        out.add(label, "failed", f"{run.reused} trained another config than the comparison's "
                f"({config_difference(vouched(expected, 'baseline'), vouched(own, 'baseline'))})")
        return None
    out.add(label, "verified", f"{run.reused}, the run the baseline's evidence records, trained the comparison's "
            "config with this seed")
    return own


def _verify_optimized_config(project: Project, facts: OptimizationFacts, out: PhaseVerification) -> None:
    """configs/optimized_config.yaml sets the best trial's parameters."""
    ref, best = facts.optimized_config, facts.best
    if ref is None or best is None:
        return
    path = project.inside(ref.path)
    if not path.is_file():
        out.add(f"optimized config ({ref.path})", "unverifiable", "not on this machine")
        return
    values = flatten(load_config(path).model_dump(mode="json"))
    wrong = [f"{k} {values.get(k)!r} (the best trial's {v!r})" for k, v in best.params.items() if values.get(k) != v]
    out.add(f"optimized config ({ref.path})", "failed" if wrong else "verified",
            "; ".join(wrong) if wrong else "sets the best trial's parameters: "
            + ", ".join(f"{k} {v!r}" for k, v in best.params.items()))


def _verify_export(project: Project, facts: FinalizationFacts, exported: dict[int, str],
                   out: PhaseVerification) -> None:
    """export/model_state_dict.pt holds the weights of the member the evidence says was exported."""
    record = next((e for e in facts.exports if e.kind == "state_dict" and e.verified and e.path), None)
    if record is None:
        return
    name = f"export {record.path}"
    path = project.inside(record.path)
    if not path.is_file():
        out.add(name, "unverifiable", "not on this machine")
        return
    if file_sha256(path) != record.sha256:
        out.add(name, "failed", "the file is not the one the evidence records (its sha256 differs)")
        return
    digest = weights_digest(load_checkpoint(path))
    if digest is None:
        out.add(name, "failed", "the file holds no weights")
        return
    expected = exported.get(facts.exported_seed) if facts.exported_seed is not None else None
    if expected is None:
        out.add(name, "unverifiable", f"the exported member (seed {facts.exported_seed}) was not recomputed")
    elif digest != expected:
        out.add(name, "failed", f"its weights ({digest[:12]}) are not seed {facts.exported_seed}'s best checkpoint "
                f"({expected[:12]})")
    else:
        out.add(name, "verified", f"the weights of seed {facts.exported_seed}'s best checkpoint, whose test figures "
                "recomputed")


def verify_setup(project: Project, facts: SetupFacts, cfg: WorkflowConfig, out: PhaseVerification,
                 on_message: Callable[[str], None] = lambda _m: None) -> None:
    """Setup's checks done again with the config setup verified: the data's sizes, classes and
    overlaps, the model's forward pass, and the short reproducibility run's end weights."""
    on_message("Checking the data pipeline again")
    bundle = build_data(cfg, project.root)
    data = check_setup_data(cfg, project.root, bundle)
    keys = ("train_size", "val_size", "test_size", "num_classes", "class_counts_train", "class_counts_val",
            "overlap_train_val", "overlaps", "file_overlaps", "problems")
    recorded = facts.data.model_dump(mode="json")
    if recorded.get("file_overlaps") is None:  # an earlier wf's setup: the copies it missed are in "problems" now
        keys = tuple(k for k in keys if k != "file_overlaps")
    wrong = [f"{k} {data.get(k)!r} (recorded {recorded.get(k)!r})" for k in keys if data.get(k) != recorded.get(k)]
    out.add("data checks", "failed" if wrong else "verified", "; ".join(wrong) if wrong else
            f"train {data['train_size']}, val {data['val_size']}, test {data['test_size']}, {data['num_classes']} "
            "classes, the class counts and overlaps as recorded")
    model = build_model(cfg.model, bundle.num_classes, bundle.input_shape, project.root)
    model.eval()
    with torch.no_grad():
        shape = list(model(torch.stack([torch.as_tensor(bundle.train[0][0])] * 2)).shape)
    claimed = facts.model
    agree = claimed.ok and claimed.parameters == count_parameters(model) and claimed.output_shape == shape
    out.add("model forward pass", "verified" if agree else "failed",
            f"{count_parameters(model):,} parameters, output {shape}" + ("" if agree else
            f" (recorded {claimed.parameters} parameters, output {claimed.output_shape}, ok={claimed.ok})"))
    rep = facts.reproducibility
    if not rep.weights_sha256:
        out.add("reproducibility run", "unverifiable", "setup recorded no weights digest (an earlier wf); run "
                "`wf phase setup` again")
        return
    on_message(f"Training the reproducibility run again ({rep.steps} steps)")
    trainer = Trainer(cfg, project.root, None, run_id="verify-setup", phase="setup", data=bundle, short_check=True)
    result = trainer.fit(max_steps=rep.steps)
    digest = weights_sha256(result.model.state_dict())
    exact = str(resolve_device(cfg.training.device)) == "cpu"
    if digest == rep.weights_sha256:
        out.add("reproducibility run", "verified", f"{rep.steps} steps trained again: bit-equal weights ({digest[:12]})")
    else:
        out.add("reproducibility run", "failed" if exact else "unverifiable",
                f"{rep.steps} steps trained again: the weights hash to {digest[:12]}, setup recorded "
                f"{rep.weights_sha256[:12]}" + ("" if exact else " (on a GPU, kernels may differ in the last bits)"))


