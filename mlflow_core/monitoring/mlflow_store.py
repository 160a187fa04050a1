"""MLflow tracking (`monitoring.mlflow: true`, the `mlflow` extra): one MLflow run per wf run.

The store is `MLFLOW_TRACKING_URI` when set, else `monitoring.mlflow_uri`, else the project's own
SQLite file, `mlflow.db` (git-ignored; MLflow 3's default kind of store, its file store being
refused from 3.13), with artifacts in `mlartifacts/` next to it, never the working directory's
`./mlruns`. The experiment is the project's name; each run is named by its wf run id.

Everything goes through MlflowClient with explicit run ids, never MLflow's fluent API (its active
run lives in a thread-local stack and is ended FINISHED at exit, whatever happened). Tracking is for
looking at, not evidence (metrics.json and the evidence files are the record): every call is
guarded, and the first failure (an unreachable server, a locked database, a full disk) is said once
and ends the tracking, never the run. Torch-free; mlflow is imported only when tracking is on.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow_core.errors import UserInputError

MLFLOW_DB = "mlflow.db"
RETRIES, BACKOFF = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
REPEAT_FOR_S = 30.0  # wf's own tries of a write safe to repeat that MLflow does not retry (Store.call)
REMOTE_RETRIES, REMOTE_BACKOFF = 4, 2  # urllib3's backoff: 2, 4, 8, 16 s between tries, half a minute in all
_SET_BY_WF: set[str] = set()  # the MLflow variables wf set in this process (a user's own are never changed)
ARTIFACTS_DIR = "mlartifacts"
PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # MLflow's limits per log_batch
MAX_PARAM_VALUE, MAX_TAG_VALUE, MAX_KEY = 6000, 8000, 250
_KEY = re.compile(r"[^A-Za-z0-9_\-./ :]")  # what MLflow accepts in a metric or param key

log = logging.getLogger("wf.mlflow")


@contextmanager
def root_logging_kept() -> Iterator[None]:
    """Importing parts of MLflow adds a handler to the root logger (basicConfig), which would print
    every wf log line on stderr a second time: it is taken off again. And MLflow's own loggers (and
    alembic's, which builds its tables) print INFO lines on the terminal ("Creating initial MLflow
    database tables…"): they are routed into wf's log instead (the run's training.log)."""
    before = list(logging.root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in logging.root.handlers if h not in before]:
            logging.root.removeHandler(handler)
        for name in ("mlflow", "alembic"):
            library = logging.getLogger(name)
            if not any(isinstance(h, _IntoWfLog) for h in library.handlers):
                library.handlers = [_IntoWfLog()]
                library.propagate = False


class _IntoWfLog(logging.Handler):
    """A library's log records, handled as wf's own: into the run's log, and on the terminal only
    from WARNING (Python's last-resort handler) when no run logs."""

    def emit(self, record: logging.LogRecord) -> None:
        log.handle(record)


def require_mlflow() -> None:
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserInputError("monitoring.mlflow is on and the mlflow package is not installed.",
                             hint="Install it with `pip install 'wf-phases[mlflow]'`, or set monitoring.mlflow: false.")


def tracking_uri(project_root: Path, configured: str | None) -> str:
    """Where the runs go: MLFLOW_TRACKING_URI, else monitoring.mlflow_uri, else the project's file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{(project_root / MLFLOW_DB).resolve()}"


PROJECT_STORE = f"sqlite:///{MLFLOW_DB}"  # the project's own store, as committed files name it


def portable_uri(uri: str, project_root: Path) -> str:
    """A store URI as committed files record it: the project's own SQLite file relative to the
    project (a moved or copied project then means its own store), any other store as it is."""
    return PROJECT_STORE if uri == f"sqlite:///{(project_root / MLFLOW_DB).resolve()}" else uri


def resolved_uri(uri: str, project_root: Path) -> str:
    """A recorded store URI where this project is: the project's own file resolved against it."""
    return f"sqlite:///{(project_root / MLFLOW_DB).resolve()}" if uri == PROJECT_STORE else uri


def ui_command(uri: str, project_root: Path | None = None) -> str:
    """How to look at the runs: MLflow's own UI on the store (full `mlflow`, the same version), said
    from the project's root for its own file (a committed report names no path of this machine)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    if project_root is not None and uri == f"sqlite:///{(project_root / MLFLOW_DB).resolve()}":
        uri = f"sqlite:///{MLFLOW_DB}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --workers 1"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as dotted keys with string values, as MLflow's params hold them."""
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[_KEY.sub("_", dotted)[:MAX_KEY]] = str(value)
    return out


def metric_key(key: str) -> str:
    return _KEY.sub("_", key)[:MAX_KEY]


class Store:
    """A project's MLflow store, every call guarded. `ok` turns False at the first failure."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None,
                 notify: Callable[[str], None] | None = None):
        self.uri, self.client, self.experiment_id = uri, None, None
        self.notify = notify  # where the one warning goes besides the log (the phase's messages)
        self.pending: list[Any] = []  # batches sent without waiting, until flush
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from a training job
        remote = self.remote = uri.startswith(("http://", "https://"))
        chosen = {k for k in (RETRIES, BACKOFF) if k in os.environ and k not in _SET_BY_WF}  # the user's win
        if remote:  # MLflow's defaults retry for about four minutes: opening gives up at once
            if RETRIES not in chosen:
                os.environ[RETRIES] = "0"
                _SET_BY_WF.add(RETRIES)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        try:
            with root_logging_kept():
                from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            self.experiment_id = _experiment_id(client, experiment, artifact_root)
            self.client = client
            if remote:  # open: a server that drops a call mid-run is tried again, 2+4+8+16 s at most
                for key, value in ((RETRIES, str(REMOTE_RETRIES)), (BACKOFF, str(REMOTE_BACKOFF))):
                    if key not in chosen:
                        os.environ[key] = value
                        _SET_BY_WF.add(key)
        except Exception as exc:  # MLflow raises many kinds (connection, schema, sqlite): tracking stops
            self._failed("cannot open the store", exc)

    @property
    def ok(self) -> bool:
        return self.client is not None

    def call(self, what: str, fn: Any, *args: Any, repeat_safe: bool = False, **kwargs: Any) -> Any:
        """`fn` (a callable, or the name of an MlflowClient method, looked up only while the store is
        open) guarded: after the first failure every call is a no-op returning None.

        MLflow retries what a server could not have processed (a refused connection, a 503) and the
        writes it knows are safe to repeat; a write whose connection dropped after it was sent (it
        may have been done) fails at once. `repeat_safe` marks such a write that is safe to send
        again (MLflow's store deduplicates it, or `fn` looks before it writes): on a remote store it
        is tried again with backoff, for REPEAT_FOR_S at most."""
        if self.client is None:
            return None
        if isinstance(fn, str):
            fn = getattr(self.client, fn)
        deadline, wait = time.monotonic() + REPEAT_FOR_S, 2.0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if repeat_safe and self.remote and _connection_dropped(exc) and time.monotonic() + wait < deadline:
                    log.info("MLflow: %s at %s: the connection dropped; trying again in %.0f s", what, self.uri, wait)
                    time.sleep(wait)
                    wait *= 2
                    continue
                self._failed(what, exc)
                return None

    def _failed(self, what: str, exc: Exception) -> None:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        hint = ("; a store written by a newer MLflow needs `pip install -U mlflow-skinny`"
                if "out-of-date database schema" in str(exc) or "newer" in str(exc).lower() else "")
        message = (f"MLflow tracking stopped ({what} at {self.uri}): {first}{hint}; the run goes on, "
                   "its record is metrics.json")
        if self.notify is not None:
            self.notify(message)
        else:
            log.warning("%s", message)
        self.client = None

    # -- runs ------------------------------------------------------------------------------------------

    def create_run(self, name: str, tags: dict[str, str], parent: str | None = None) -> str | None:
        """A run named `name` with wf's tags over MLflow's own context tags (mlflow.user,
        mlflow.source.name and .type, the git commit: what Lightning and transformers get from
        resolve_tags), nested under `parent` when given."""
        tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in _with_context(tags).items()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        tries = 0

        def create() -> Any:  # a try after a dropped connection first looks for the run the last one made
            nonlocal tries
            tries += 1
            if tries > 1 and "wf.run_id" in tags:
                made = self.client.search_runs([self.experiment_id], max_results=1,
                                               filter_string=f"tags.`wf.run_id` = '{tags['wf.run_id']}' and "
                                                             f"attributes.run_name = '{name}'")
                if made:
                    return made[0]
            return self.client.create_run(self.experiment_id, run_name=name, tags=tags)

        run = self.call("create a run", create, repeat_safe=True)
        return run.info.run_id if run is not None else None

    def reopen(self, run_id: str) -> bool:
        """A resumed wf run continues its MLflow run: RUNNING again (a kill -9 left it so too)."""
        self.call("reopen the run", "update_run", run_id, status="RUNNING")
        return self.ok

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(k, str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for start in range(0, len(entries), PARAMS_PER_CALL):
            self.call("set tags", "log_batch", run_id, tags=entries[start:start + PARAMS_PER_CALL])

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """The flattened config. A resumed run logs only keys it lacks (MLflow refuses a changed
        value): a value that changed is tagged `wf.param_drift`, never an error."""
        from mlflow.entities import Param

        run = self.call("read the run", "get_run", run_id)
        if run is None:
            return
        logged = run.data.params
        drift = sorted(k for k, v in params.items() if k in logged and logged[k] != v[:MAX_PARAM_VALUE])
        long = sorted(k for k, v in params.items() if len(v) > MAX_PARAM_VALUE)
        if long:
            log.warning("MLflow: params longer than %d characters not logged: %s", MAX_PARAM_VALUE, ", ".join(long))
        new = [Param(k, v) for k, v in params.items() if k not in logged and len(v) <= MAX_PARAM_VALUE]
        for start in range(0, len(new), PARAMS_PER_CALL):
            self.call("log params", "log_batch", run_id, params=new[start:start + PARAMS_PER_CALL])
        if drift:
            self.set_tags(run_id, {"wf.param_drift": ", ".join(drift)})

    def log_metrics(self, run_id: str, rows: list[tuple[str, float, int]], *, wait: bool = False,
                    model_id: str | None = None) -> None:
        """(key, value, step) rows in batches, without waiting for the store (MLflow's background
        queue) unless `wait`; linked to a logged model when `model_id` is given (its metrics in
        MLflow's Models tab). A non-finite value is left out: a NaN loss is the run's event, not a point."""
        import math

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), float(v), now, int(s), model_id=model_id) for k, v, s in rows
                   if isinstance(v, (int, float)) and math.isfinite(v)]
        for start in range(0, len(metrics), METRICS_PER_CALL):
            operations = self.call("log metrics", "log_batch", run_id,
                                   metrics=metrics[start:start + METRICS_PER_CALL], synchronous=wait)
            if operations is not None:
                self.pending.append(operations)

    def last_step(self, run_id: str, key: str) -> int | None:
        history = self.call("read a metric", "get_metric_history", run_id, metric_key(key))
        return max((m.step for m in history), default=None) if history else None

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        """The data a run trained on as its dataset input: named, with wf's data fingerprint as digest
        (MLflow keeps 36 characters of it) and each split's size as profile."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name[:500], digest=digest[:36], source_type="local", source=source[:1000],
                          profile=json.dumps(profile))
        self.call("log the dataset", "log_inputs", run_id, repeat_safe=True,  # the store keeps one input per dataset
                  datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_file():
            self.call(f"log {path.name}", "log_artifact", run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str) -> None:
        """FINISHED, FAILED or KILLED, after whatever is still queued has reached the store."""
        self.flush()
        if self.client is None:
            return
        # set_terminated first shuts MLflow's logging thread down for every run of the process (a
        # second each time, for each trial); with this run's batches already in, its status and end
        # time go to the store directly, where the store allows it
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if callable(getattr(store, "update_run_info", None)):
            from mlflow.entities import RunStatus

            self.call("end the run", store.update_run_info, run_id, run_status=RunStatus.from_string(status),
                      end_time=int(time.time() * 1000), run_name=None)
        else:
            self.call("end the run", "set_terminated", run_id, status=status)

    def flush(self) -> None:
        """Wait for the batches sent without waiting (their RunOperations), not for MLflow's whole
        queue: its flush stops and restarts the logging thread, a second each time."""
        pending, self.pending = self.pending, []
        for operations in pending:
            self.call("send metrics", operations.wait)


_DROPPED = ("Connection aborted", "RemoteDisconnected", "Connection reset", "Read timed out", "Max retries exceeded",
            "Connection refused", "BrokenPipe")


def _connection_dropped(exc: BaseException) -> bool:
    """Whether `exc` (MLflow wraps the HTTP library's error in its own message) is a connection that
    failed, rather than the server refusing the call."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(sign in str(seen) for sign in _DROPPED):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _with_context(tags: dict[str, Any]) -> dict[str, Any]:
    """MLflow's context tags under wf's (wf's win), as MLflow's fluent start_run would add them."""
    try:
        with root_logging_kept():
            from mlflow.tracking.context.registry import resolve_tags

            return resolve_tags(tags)
    except Exception:  # a context provider that fails (git, an odd environment) leaves wf's tags as they are
        return dict(tags)


_STORES: dict[tuple[str, str], Store] = {}


def open_store(project_root: Path, configured_uri: str | None, experiment: str,
               notify: Callable[[str], None] | None = None) -> Store:
    """The process's one Store for a project's experiment (the parent process creates and migrates
    the store before any trainer, sweep worker or rank writes to it)."""
    require_mlflow()
    uri = tracking_uri(project_root, configured_uri)
    key = (uri, experiment)
    if key not in _STORES or not _STORES[key].ok:
        served = uri.startswith(("http://", "https://", "databricks"))  # the server keeps the artifacts
        _STORES[key] = Store(uri, experiment, None if served else project_root / ARTIFACTS_DIR, notify)
    _STORES[key].notify = notify or _STORES[key].notify
    return _STORES[key]


def _experiment_id(client: Any, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, made when it does not exist yet. Two processes opening a new store at
    once (sweep workers) both find none and both create it: the second is told it exists, and takes
    the first's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def fetch_run_checkpoints(uri: str, wf_run_id: str, destination: Path) -> str | None:
    """The checkpoints a training run logged (`monitoring.mlflow_log_checkpoints`: its best checkpoint
    and its kept training states) downloaded from the MLflow run tagged with its wf run id into
    `destination`/checkpoints/: what `wf verify --from mlflow` recomputes its claims from. None once
    done, else why not, for a person."""
    require_mlflow()
    with root_logging_kept():
        import mlflow.artifacts
        from mlflow.tracking import MlflowClient
    try:
        client = MlflowClient(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=f"tags.`wf.run_id` = '{wf_run_id}'", max_results=2)
        if not runs:
            return f"no MLflow run in {uri} is tagged wf.run_id = {wf_run_id}"
        run_id = runs[0].info.run_id
        if "checkpoints" not in {a.path for a in client.list_artifacts(run_id)}:
            return (f"its MLflow run {run_id} holds no checkpoints (they are logged with "
                    "monitoring.mlflow_log_checkpoints: true)")
        destination.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints", dst_path=str(destination),
                                            tracking_uri=uri)
    except Exception as exc:  # MLflow raises many kinds (the server, the store, the artifact repository)
        return f"MLflow ({uri}) could not be read: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None
