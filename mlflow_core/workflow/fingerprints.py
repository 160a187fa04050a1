"""Fingerprints of what a gate verified: the resolved config, the data, the code, the key packages.

A phase records them in its evidence when it runs; `wf gate check`, `wf status` and every phase's
entry compare them with the project as it is now. Anything that drifted re-opens the gate, and the
drift says what changed (config keys old → new, files per split, which module, which package) and
what to run again. Like DVC's `dvc.lock`, stricter: a gate is a promise to reviewers.

Nothing here imports torch; a fingerprint that cannot be taken here (data not on this machine, a
package not installed, a custom dataset whose samples only the training stack can read) is said so,
not counted as drift.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow_core import __version__
from mlflow_core.config import CONFIG_FILENAME
from mlflow_core.errors import ConfigError, UserInputError
from mlflow_core.workflow import datafiles
from mlflow_core.workflow.git import git

# the packages whose version changes a run's numbers (the rest of the environment report is context)
FINGERPRINTED_PACKAGES = ("wf", "torch", "torchvision", "numpy")
# a phase's settings are its own: a gate does not re-open when a later phase's section is edited
LATER_SECTIONS = {"setup": ("optimization", "finalization"), "baseline": ("optimization", "finalization"),
                  "diagnostics": ("optimization", "finalization"), "optimization": ("finalization",),
                  "finalization": ()}


@dataclass(frozen=True)
class Drift:
    kind: str  # config, data, code, packages; evidence: not this project's own history (binding.py)
    detail: str  # what changed, for a person

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


# Settings that change no computation: where a run's figures go and how often the GPU is sampled, and
# which training states are kept for `wf verify` (a hard link, never a draw). Turning a tracker on after
# a gate passed re-opens nothing. tests/unit/training/test_no_computation.py trains with each changed
# and holds the weights bit-equal; anything that can change a weight, a stop or a verdict counts.
NO_COMPUTATION = ("monitoring.tensorboard", "monitoring.wandb", "monitoring.wandb_project", "monitoring.mlflow",
                  "monitoring.mlflow_uri", "monitoring.mlflow_log_checkpoints", "monitoring.mlflow_system_metrics",
                  "monitoring.gpu_sample_interval_s",
                  "checkpointing.replay_every_n_epochs")


def vouched(values: dict[str, Any], phase: str) -> dict[str, Any]:
    """Of a config's dotted settings, those a gate of `phase` vouches for: all but later phases' and
    those that change no computation."""
    skip = LATER_SECTIONS.get(phase, ())
    return {k: v for k, v in values.items() if k.split(".", 1)[0] not in skip and k not in NO_COMPUTATION}


def config_sha256(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def config_fingerprint(cfg: Any, phase: str) -> dict[str, Any]:
    """Every resolved setting (dotted), and the hash of those the gate of `phase` vouches for."""
    values = flatten(cfg.model_dump(mode="json"))
    return {"sha256": config_sha256(vouched(values, phase)), "values": values}


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The keys of two flat (dotted) configs whose values differ, or that only one of them has."""
    missing = object()
    return [k for k in sorted(set(before) | set(after)) if before.get(k, missing) != after.get(k, missing)]


def config_changes(before: dict[str, Any], after: dict[str, Any], limit: int = 6) -> str:
    """'training.learning_rate 0.001 → 0.01, model.dropout 0.0 → 0.2'."""
    keys = changed_keys(before, after)
    shown = [f"{k} {json.dumps(before.get(k))} → {json.dumps(after.get(k))}" for k in keys[:limit]]
    more = f", … {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


# --- code -------------------------------------------------------------------------------------------

def _module_file(module: str, project_root: Path) -> Path | None:
    """The source of a project-local module ('pkg.mod' → pkg/mod.py or pkg/mod/__init__.py), found
    without importing it: user code never runs in a command that only checks."""
    base = project_root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_sha256(module: str, project_root: Path) -> dict[str, Any]:
    path = _module_file(module, project_root)
    if path is None:
        return {"module": module, "path": None, "sha256": None}
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]  # a package: all of it
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(project_root).as_posix().encode() + b"\0")
        digest.update(f.read_bytes())
    return {"module": module, "path": path.relative_to(project_root).as_posix(), "sha256": digest.hexdigest()}


def git_state(project_root: Path) -> dict[str, Any]:
    """The commit and whether the tree had changes: provenance, shown with a gate; a new commit alone
    (committing the reports, say) does not re-open anything."""
    commit = git(project_root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    return {"commit": commit, "dirty": bool(git(project_root, "status", "--porcelain", "--untracked-files=no"))}


def code_fingerprint(cfg: Any, project_root: Path, *, with_git: bool = True) -> dict[str, Any]:
    modules = {}
    for field, target in (("data.target", cfg.data.target if cfg.data.source == "custom" else None),
                          ("model.target", cfg.model.target if cfg.model.name == "custom" else None)):
        if target:
            modules[field] = _module_sha256(target.split(":", 1)[0], project_root)
    out: dict[str, Any] = {"modules": modules}
    if cfg.model.init_from:
        path = project_root / cfg.model.init_from
        out["init_from"] = {"path": cfg.model.init_from,
                            "sha256": datafiles.sha256_file(path) if path.is_file() else None}
    if with_git:
        out["git"] = git_state(project_root)
    return out


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in FINGERPRINTED_PACKAGES:
        try:  # wf's own version is the engine's (its distribution is named wf-phases)
            versions[name] = __version__ if name == "wf" else metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# --- data -------------------------------------------------------------------------------------------

def digits_file() -> Path | None:
    """scikit-learn's bundled digits, found without importing scikit-learn (a second of start-up)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def data_fingerprint(cfg: Any, project_root: Path, *, full: bool, reference: str | None = None) -> dict[str, Any]:
    """The data as it is now. `full` (setup): every file hashed and described, the manifest stored.
    Otherwise a quick check against the `reference` manifest: only files whose stat changed are
    hashed again, and a new manifest is stored only when the data differs."""
    source = cfg.data.source
    if source == "digits":
        path = digits_file()
        return {"source": "digits", "sha256": datafiles.sha256_file(path) if path else None,
                "split": {k: getattr(cfg.data, k) for k in ("val_fraction", "test_fraction", "split_seed")}}
    if source == "custom":
        # the samples are read through the training stack (setup records a hash of a fixed sample
        # of items); here, the module's source is in the code fingerprint
        return {"source": "custom", "target": cfg.data.target, "kwargs": cfg.data.kwargs}
    if not full and reference:
        unchanged = _unchanged_since(cfg, project_root, reference)
        if unchanged is not None:
            return unchanged
    cache = datafiles.stat_cache(project_root)
    manifest = datafiles.build_manifest(cfg, project_root, cache, describe=full)
    assert manifest is not None
    if not full and reference:
        recorded = datafiles.read_manifest(project_root, reference)
        for name, split in manifest.splits.items():  # what the files hold is read at setup only
            if name in recorded.splits and recorded.splits[name].folders() == split.folders():
                split.holds = recorded.splits[name].holds
    stored = datafiles.write_manifest(project_root, manifest)
    # the data as hashed just now is this manifest: the next gate check needs only a directory walk
    cache.save()
    listings = datafiles.listing_cache(project_root)
    listings.remember(stored, datafiles.stat_listing(datafiles.data_root(cfg, project_root), also=project_root / stored))
    listings.save()
    return {"source": source, "root": manifest.root, "manifest": stored, "sha256": Path(stored).stem,
            "splits": manifest.split_summaries()}


def _unchanged_since(cfg: Any, project_root: Path, reference: str) -> dict[str, Any] | None:
    """The reference manifest's fingerprint when the data's directory listing is the one that last
    matched it (nothing to hash again), else None."""
    root, path = datafiles.data_root(cfg, project_root), project_root / reference
    if root is None or not root.is_dir() or not path.is_file():
        return None
    if not datafiles.listing_cache(project_root).verified(reference, datafiles.stat_listing(root, also=path)):
        return None
    recorded = datafiles.read_manifest(project_root, reference)
    if recorded.root != cfg.data.path:
        return None
    return {"source": recorded.source, "root": recorded.root, "manifest": reference, "sha256": path.stem,
            "splits": recorded.split_summaries()}


def capture(cfg: Any, project_root: Path, phase: str, *, reference_manifest: str | None = None) -> dict[str, Any]:
    """Everything a gate of `phase` vouches for, as it is now (called when the phase runs)."""
    return {"config": config_fingerprint(cfg, phase),
            "data": data_fingerprint(cfg, project_root, full=phase == "setup", reference=reference_manifest),
            "code": code_fingerprint(cfg, project_root),
            "packages": package_versions()}


# --- comparison -------------------------------------------------------------------------------------

class Current:
    """The project as it is now, read once per command however many gates ask (the config is
    parsed once, the data walked once per manifest)."""

    def __init__(self, project_root: Path):
        self.root = project_root
        self._cfg: Any = None
        self._cfg_error: str | None = None
        self._data: dict[str, Any] = {}
        self._cache: datafiles.StatCache | None = None
        self._packages: dict[str, str | None] | None = None

    @property
    def cfg(self) -> Any:
        if self._cfg is None and self._cfg_error is None:
            from mlflow_core.config.loader import (
                load_config,  # the schema's models: only when a config is read
            )

            try:
                self._cfg = load_config(self.root / CONFIG_FILENAME)
            except ConfigError as exc:
                self._cfg_error = f"{CONFIG_FILENAME} does not validate: {exc.problems[0]}"
            except UserInputError as exc:
                self._cfg_error = exc.message
        return self._cfg

    @property
    def cfg_error(self) -> str:
        """Why the config cannot be read, once `cfg` has been asked for and is None."""
        return self._cfg_error or "the config cannot be read"

    def packages(self) -> dict[str, str | None]:
        if self._packages is None:
            self._packages = package_versions()
        return self._packages

    def data_changes(self, reference: str) -> dict[str, dict[str, list[str]]] | str:
        """Per split, the files added, removed and changed since the manifest `reference` was
        recorded, or why the data cannot be compared here. When the directory listing (paths, sizes,
        mtimes) is the one that last matched this manifest, nothing is read: a gate check on a
        100,000-file data set is a directory walk."""
        if reference not in self._data:
            self._data[reference] = self._compare(reference)
        return self._data[reference]

    def _compare(self, reference: str) -> dict[str, dict[str, list[str]]] | str:
        path = self.root / reference
        if not path.is_file():
            datafiles.read_manifest(self.root, reference)  # says what is missing, exit 2
        recorded_root = _manifest_root(path)
        root = self.root / recorded_root
        if not root.is_dir():
            return f"{recorded_root} is not on this machine: the data was not compared"
        listings = datafiles.listing_cache(self.root)
        listing = datafiles.stat_listing(root, also=path)
        if listings.verified(reference, listing):
            return {}
        self._cache = self._cache or datafiles.stat_cache(self.root)
        recorded = datafiles.read_manifest(self.root, reference)
        changes = datafiles.manifest_changes(recorded, manifest_of(recorded, root, self._cache))
        self._cache.save()
        if not changes:
            listings.remember(reference, listing)
            listings.save()
        return changes


def _manifest_root(path: Path) -> str:
    """The data folder a manifest describes, read from its first line (the header) only."""
    with open(path, encoding="utf-8") as f:
        head = f.readline()
    try:  # the header ends where the folders (a version-1 manifest: the files) begin
        return json.loads(head.split(', "folders": {', 1)[0].split(', "files": {', 1)[0] + "}")["root"]
    except (ValueError, KeyError) as exc:
        raise UserInputError(f"{path}: cannot be read as a wf data manifest ({exc}).",
                             hint="Restore it from version control, or run `wf phase setup` again.") from None


def manifest_of(recorded: datafiles.DataManifest, root: Path, cache: datafiles.StatCache) -> datafiles.DataManifest:
    """The data in `root` now, as a manifest like `recorded`: each split's files hashed through `cache`
    (an empty one hashes every file again: `wf verify`)."""
    splits = {name: datafiles.SplitFiles(datafiles.scan_split(root / name, cache))
              for name in datafiles.SPLITS if (root / name).is_dir()}
    return datafiles.DataManifest(recorded.source, recorded.root, splits)


def drift(recorded: dict[str, Any], phase: str, now: Current, *, approved_later: list[dict[str, Any]] = ()
          ) -> tuple[list[Drift], list[str]]:
    """What changed since a gate of `phase` recorded `recorded` (its fingerprints), and notes on what
    could not be compared here. `approved_later`: config fingerprints that a later gate on the path
    approved (the optimized config); the config in force may be one of those instead."""
    drifts: list[Drift] = []
    notes: list[str] = []
    cfg = now.cfg
    rec_config = recorded.get("config") or {}
    if cfg is None:
        drifts.append(Drift("config", now.cfg_error))
    elif rec_config:
        values = vouched(flatten(cfg.model_dump(mode="json")), phase)
        # the config the gate verified, those it approves for what comes next, and later gates' approvals
        approved = [vouched(c.get("values") or {}, phase)
                    for c in [rec_config, *(recorded.get("approves") or []), *approved_later]]
        if values not in approved:
            drifts.append(Drift("config", f"training_config.yaml changed since the gate verified it: "
                                f"{config_changes(approved[0], values)}"))
    rec_data = recorded.get("data") or {}
    if cfg is not None and rec_data:
        drifts += _data_drift(rec_data, cfg, now, notes)
    rec_code = recorded.get("code") or {}
    if cfg is not None and rec_code:
        current = code_fingerprint(cfg, now.root, with_git=False)
        for field, module in (rec_code.get("modules") or {}).items():
            mine = (current["modules"].get(field) or {})
            if mine.get("sha256") != module.get("sha256"):
                where = module.get("path") or module.get("module")
                drifts.append(Drift("code", f"{field} {module.get('module')!r}: the source ({where}) changed"
                                    if mine.get("sha256") else f"{field} {module.get('module')!r}: its source "
                                    f"({where}) is gone"))
        for field in set(current["modules"]) - set(rec_code.get("modules") or {}):
            drifts.append(Drift("code", f"{field} {current['modules'][field]['module']!r} is new since the gate"))
        init = rec_code.get("init_from")
        if init and (current.get("init_from") or {}).get("sha256") != init.get("sha256"):
            drifts.append(Drift("code", f"model.init_from {init['path']}: the weights file changed"))
    for name, version in (recorded.get("packages") or {}).items():
        mine = now.packages().get(name)
        if mine is None:
            if version is not None:
                notes.append(f"{name} is not installed here: its version was not compared")
        elif version is not None and mine != version:
            drifts.append(Drift("packages", f"{name} {version} → {mine}"))
    return drifts, notes


def _data_drift(rec: dict[str, Any], cfg: Any, now: Current, notes: list[str]) -> list[Drift]:
    source = rec.get("source")
    if source != cfg.data.source:
        return [Drift("data", f"data.source {source} → {cfg.data.source}")]
    if source == "digits":
        path = digits_file()
        if path is None:
            notes.append("scikit-learn is not installed here: the digits data was not compared")
            return []
        if rec.get("sha256") and datafiles.sha256_file(path) != rec["sha256"]:
            return [Drift("data", "scikit-learn's bundled digits file differs")]
        split_now = {k: getattr(cfg.data, k) for k in ("val_fraction", "test_fraction", "split_seed")}
        if rec.get("split") and rec["split"] != split_now:
            return [Drift("data", f"the digits split changed: {rec['split']} → {split_now}")]
        return []
    if source == "custom":
        notes.append("custom data: its samples are compared by the next `wf phase` (it needs the training stack)")
        return []
    changes = now.data_changes(rec["manifest"])
    if isinstance(changes, str):
        notes.append(changes)
        return []
    return [Drift("data", f"the data in {rec.get('root') or cfg.data.path} changed since it was verified: "
                  f"{datafiles.describe_changes(changes)}")] if changes else []


def rerun_hint(phase: str) -> str:
    return f"run `wf phase {phase}` again" + ("" if phase == "setup" else " (or `wf phase setup` first, if the "
                                               "config or the data changed on purpose)")
