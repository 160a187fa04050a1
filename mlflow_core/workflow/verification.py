"""`wf verify`: the recorded claims recomputed from the artifacts, as verdicts.

A gate reads committed evidence, and a pull-request author can edit every committed file, hashes
included: a hash that its editor can recompute proves nothing. What `wf verify` trusts is what it
computes again itself, from the files the claims are about (the data, the checkpoints, the training
states a run kept) and the config they were made with:

- data: every file of every split hashed again (no stat cache) and compared with the manifest the
  evidence names;
- a checkpoint a gate relies on: its weights digest against the epoch's recorded one, and its
  validation figures computed again on the recorded split, bit-equal on the CPU;
- training: the first kept state against the model the config's seed initializes, every kept state
  against the digest of the epoch before it, and segments chosen at random at verification time
  trained again from their kept state, landing on the recorded digest;
- setup's data checks, forward pass and short reproducibility run, done again.

A claim is `verified`, `failed` (it does not recompute) or `unverifiable` (nothing here to recompute it
from: the run kept no states, the files are not on this machine). `wf verify` passes only when every
claim is verified: unverifiable fails closed. This module is torch-free; the recomputation that
trains and evaluates is runners/verification.py (phase by phase) and runners/run_claims.py (one run).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlflow_core.workflow import datafiles, fingerprints
from mlflow_core.workflow.project import Project

ClaimStatus = Literal["verified", "failed", "unverifiable"]


@dataclass(frozen=True)
class Claim:
    name: str  # what is claimed, for a person: "data", "best checkpoint", "training epoch 4 (replay)"
    status: ClaimStatus
    detail: str

    @property
    def verified(self) -> bool:
        return self.status == "verified"


@dataclass
class PhaseVerification:
    phase: str
    run_id: str | None
    claims: list[Claim] = field(default_factory=list)
    duration_s: float | None = None  # the recomputation's own time (the process's start and imports apart)

    @property
    def passed(self) -> bool:
        return bool(self.claims) and all(c.verified for c in self.claims)

    def add(self, name: str, status: ClaimStatus, detail: str) -> None:
        self.claims.append(Claim(name, status, detail))

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "run_id": self.run_id, "passed": self.passed, "duration_s": self.duration_s,
                "claims": [asdict(c) for c in self.claims]}


def verify_data(project: Project, recorded: dict[str, Any] | None, config: dict[str, Any]) -> Claim:
    """The data a phase recorded, hashed again file by file (no stat cache: a cache is this machine's
    memory of earlier hashes, and what it remembers is not recomputed). `config`: the run's resolved
    config, dotted."""
    if not recorded:
        return Claim("data", "unverifiable", "the evidence records no data fingerprint")
    source = recorded.get("source")
    if source == "digits":
        path = fingerprints.digits_file()
        if path is None:
            return Claim("data", "unverifiable", "scikit-learn is not installed here: its digits file cannot be read")
        digest = datafiles.sha256_file(path)
        if recorded.get("sha256") != digest:
            return Claim("data", "failed", f"scikit-learn's digits file hashes to {digest[:12]}, the evidence "
                         f"records {str(recorded.get('sha256'))[:12]}")
        split = {k: config.get(f"data.{k}") for k in ("val_fraction", "test_fraction", "split_seed")}
        if recorded.get("split") != split:
            return Claim("data", "failed", f"the evidence records the split {recorded.get('split')}, the run's "
                         f"config says {split}")
        return Claim("data", "verified", f"scikit-learn's digits file hashed again: sha256 {digest[:12]}; "
                     f"split {split}")
    if source == "custom":
        return Claim("data", "unverifiable", "custom data (data.target): its samples are compared with the digests "
                     "setup recorded by `wf verify setup`")
    manifest = recorded.get("manifest")
    if not manifest:
        return Claim("data", "unverifiable", "the evidence names no data manifest")
    recorded_manifest = datafiles.read_manifest(project.root, manifest)  # a forged manifest is exit 2, named
    root = project.root / recorded_manifest.root
    if not root.is_dir():
        return Claim("data", "unverifiable", f"{recorded_manifest.root}/ is not on this machine: run `wf verify` "
                     "where the data is")
    with tempfile.TemporaryDirectory() as scratch:  # an empty cache: every file is read and hashed
        current = fingerprints.manifest_of(recorded_manifest, root, datafiles.StatCache(Path(scratch) / "stat.sqlite"))
    changes = datafiles.manifest_changes(recorded_manifest, current)
    files = sum(len(s.files) for s in current.splits.values())
    if changes:
        return Claim("data", "failed", f"{recorded_manifest.root}/ is not the data the evidence records: "
                     f"{datafiles.describe_changes(changes)}")
    return Claim("data", "verified", f"{files:,} files in {recorded_manifest.root}/ hashed again: they are the "
                 f"ones {manifest} lists")


def config_difference(recorded: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """None when two resolved configs (dotted) agree, else which settings differ."""
    if recorded == actual:
        return None
    return fingerprints.config_changes(recorded, actual)


def expected_config(recorded: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The dotted config a run of a phase trained: the phase's recorded config with the run's own
    changes (a seed, a trial's parameters, its epochs), and a curriculum's stages fitted to a new
    number of epochs, as config.schema.with_changes makes it."""
    from mlflow_core.config.schema import fit_stages

    out = {**recorded, **changes}
    stages = recorded.get("curriculum.stages")
    if "training.epochs" in changes and "curriculum.stages" not in changes and stages:
        out["curriculum.stages"] = fit_stages(stages, changes["training.epochs"])
    return out
