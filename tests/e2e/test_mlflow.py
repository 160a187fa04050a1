"""MLflow tracking and the registry behind the release gate, read back with MLflow's own client:
one MLflow run per wf run (trials, comparison runs and final seeds nested under their phase's run),
every step once even across a kill -9 and --resume, FAILED on a crash and KILLED on a signal, a
server reached over MLflow's REST API, an unreachable one never stopping a run, and `wf release`
setting the alias only when the pre_release gate passes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import configure, write_crashing_model

pytest.importorskip("mlflow")
torch = pytest.importorskip("torch")

WF = [sys.executable, "-m", "mlflow_core"]
OVERRIDE = ["--override-gate", "tests: tracked in MLflow from here"]


def _wf(project: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run([*WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _uri(project: Path) -> str:
    return f"sqlite:///{(project / 'mlflow.db').resolve()}"


def _runs(client, name: str):
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def _state(project: Path) -> dict:
    return json.loads((project / ".wf" / "state.json").read_text())


@pytest.fixture(autouse=True)
def _mlflow_uris_kept(monkeypatch):
    """mlflow.set_tracking_uri (a test loading a model back) also sets MLFLOW_TRACKING_URI in the
    environment, which every later `wf` this process starts would inherit: undone after each test."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tracked(project_copy, mlflow_store_template) -> Path:
    """The session's trained project, tracked in MLflow from now on (a migrated store copied in)."""
    shutil.copy(mlflow_store_template, project_copy / "mlflow.db")
    configure(project_copy, [("monitoring.mlflow", "true")])
    return project_copy


def test_quickstart_with_mlflow_leaves_finished_runs_with_params_every_step_and_the_report(tmp_path):
    r = subprocess.run([*WF, "quickstart", "q", "--mlflow"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    project = tmp_path / "q"
    # the output is wf's own: MLflow's INFO lines (creating its tables) go to the run's log
    assert "INFO" not in r.stdout + r.stderr and "mlflow.store" not in r.stdout + r.stderr
    setup_log = next(project.glob("runs/setup-*/logs/training.log")).read_text()
    assert "mlflow.store.db.utils: Creating initial MLflow database tables" in setup_log
    client = _client(_uri(project))
    runs = {run.data.tags["wf.phase"]: run for run in _runs(client, "q")}
    assert set(runs) == {"setup", "baseline"}
    baseline = runs["baseline"]
    record = next(run for run in _state(project)["runs"] if run["phase"] == "baseline")
    assert baseline.info.status == "FINISHED" and baseline.info.run_name == record["run_id"]
    assert record["mlflow_run_id"] == baseline.info.run_id
    assert len(baseline.data.params) >= 10 and baseline.data.params["training.learning_rate"] == "0.001"
    assert baseline.data.tags["wf.passed"] == "true"  # the run's own outcome, which no later tick changes
    assert not [t for t in baseline.data.tags if t.startswith("wf.gate.")]  # a gate's verdict would go stale
    # MLflow's own context tags, as its fluent API would set them, and the data as the run's dataset input
    assert baseline.data.tags["mlflow.user"] and baseline.data.tags["mlflow.source.name"]
    setup_facts = json.loads((project / ".wf" / "evidence" / "setup.json").read_text())["facts"]
    (dataset,) = [d.dataset for d in baseline.inputs.dataset_inputs]
    assert dataset.digest == setup_facts["fingerprints"]["data"]["sha256"][:36] and "digits" in dataset.name
    steps = (project / record["dir"] / "logs" / "steps.csv").read_text().splitlines()[1:]
    history = client.get_metric_history(baseline.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [int(row.split(",")[0]) for row in steps]  # one point a step
    epochs = json.loads((project / record["dir"] / "logs" / "metrics.json").read_text())["epochs"]
    assert len(client.get_metric_history(baseline.info.run_id, "epoch/val_accuracy")) == len(epochs)  # early stopping may end it sooner
    reports = [a.path for a in client.list_artifacts(baseline.info.run_id, "reports")]
    assert "reports/baseline_results.md" in reports
    figures = [a.path for a in client.list_artifacts(baseline.info.run_id, "reports/figures")]
    assert figures and all(f.endswith(".png") for f in figures)
    report = (project / "reports" / "baseline_results.md").read_text()
    assert f"MLflow run `{baseline.info.run_id}`" in report
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in report
    assert "mlflow.db" in (project / ".gitignore").read_text()


def test_kill_9_then_resume_is_one_mlflow_run_with_each_step_once(tracked):
    configure(tracked, [("checkpointing.resume_every_n_steps", "20"), ("training.epochs", "4")])
    proc = subprocess.Popen([*WF, "phase", "baseline", *OVERRIDE], cwd=tracked,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = {r["run_id"] for r in _state(tracked)["runs"]}
    deadline = time.time() + 120
    while time.time() < deadline:
        fresh = [p for p in (tracked / "runs").glob("baseline-*/logs/steps.csv") if p.parts[-3] not in before]
        if fresh and len(fresh[0].read_text().splitlines()) > 70:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    run = _state(tracked)["runs"][-1]
    assert run["status"] == "running" and run["mlflow_run_id"]
    r = _wf(tracked, "phase", "baseline", "--resume")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    client = _client(_uri(tracked))
    baselines = [x for x in _runs(client, "q") if x.data.tags.get("wf.phase") == "baseline"]
    assert [x.info.run_id for x in baselines] == [run["mlflow_run_id"]]  # one MLflow run, continued
    assert baselines[0].info.status == "FINISHED" and baselines[0].data.tags["wf.resumed"] == "true"
    steps = (tracked / run["dir"] / "logs" / "steps.csv").read_text().splitlines()[1:]
    history = sorted(m.step for m in client.get_metric_history(run["mlflow_run_id"], "train/loss"))
    assert history == list(range(len(steps)))  # each step once
    assert len(client.get_metric_history(run["mlflow_run_id"], "epoch/epoch")) == 4


def test_a_crash_ends_the_mlflow_run_failed_and_a_signal_killed(tracked):
    config = (tracked / "training_config.yaml").read_text()
    write_crashing_model(tracked)
    assert _wf(tracked, "phase", "baseline", *OVERRIDE).returncode == 1
    (tracked / "training_config.yaml").write_text(config)
    configure(tracked, [("training.epochs", "30")])
    proc = subprocess.Popen([*WF, "phase", "baseline", *OVERRIDE], cwd=tracked,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tracked / "runs").glob("baseline-*/checkpoints/best_model.pt"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    client = _client(_uri(tracked))
    statuses = sorted(x.info.status for x in _runs(client, "q") if x.data.tags.get("wf.phase") == "baseline")
    assert statuses == ["FAILED", "KILLED"]


def test_system_metrics_on_request_land_in_the_phase_run(tracked):
    configure(tracked, [("training.epochs", "2")])
    r = _wf(tracked, "phase", "baseline", *OVERRIDE, env={"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "true",
                                                          "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    run = next(x for x in _runs(_client(_uri(tracked)), "q") if x.data.tags.get("wf.run_id") ==
               _state(tracked)["runs"][-1]["run_id"])
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)


def test_an_mlflow_run_left_running_by_an_outage_is_ended_by_the_next_phase(tracked):
    configure(tracked, [("training.epochs", "2")])
    assert _wf(tracked, "phase", "baseline", *OVERRIDE).returncode == 0
    first = _state(tracked)["runs"][-1]
    client = _client(_uri(tracked))
    client.update_run(first["mlflow_run_id"], status="RUNNING")  # as a store that failed at the end leaves it
    r = _wf(tracked, "phase", "baseline", *OVERRIDE)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    repaired = client.get_run(first["mlflow_run_id"])
    assert repaired.info.status == "FINISHED" and "ended by a later wf command" in repaired.data.tags["wf.repaired"]


def test_an_unreachable_server_gives_one_warning_and_the_run_completes(tracked):
    configure(tracked, [("training.epochs", "2")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is: nothing listens there
    r = _wf(tracked, "phase", "baseline", *OVERRIDE, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert r.stdout.count("MLflow tracking stopped") == 1 and "the run goes on" in r.stdout
    assert "baseline passed" in r.stdout


@pytest.fixture
def mlflow_server(tracked, tmp_path):
    """A real MLflow server (`mlflow server`, the full package) on a copy of the migrated store: its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "server.db"
    shutil.copy(tracked / "mlflow.db", store)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow server did not answer /health within 120 s")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_a_real_mlflow_server_receives_the_run_through_its_rest_api(tracked, mlflow_server):
    url = mlflow_server
    configure(tracked, [("training.epochs", "2")])
    r = _wf(tracked, "phase", "baseline", *OVERRIDE, env={"MLFLOW_TRACKING_URI": url})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    client = _client(url)  # MLflow's REST client
    found = client.search_runs([client.get_experiment_by_name("q").experiment_id],
                               filter_string="tags.`wf.phase` = 'baseline'")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    record = _state(tracked)["runs"][-1]
    assert found[0].info.run_name == record["run_id"] and record["mlflow_uri"] == url
    steps = (tracked / record["dir"] / "logs" / "steps.csv").read_text().splitlines()[1:]
    assert len(client.get_metric_history(found[0].info.run_id, "train/loss")) == len(steps)
    assert "reports/baseline_results.md" in [a.path for a in client.list_artifacts(found[0].info.run_id, "reports")]


class DroppingProxy:
    """A TCP proxy in front of the MLflow server that can drop every connection for a while, open
    ones and new ones alike: what a restarting load balancer or a network partition does to a client."""

    def __init__(self, target_port: int):
        self.target, self.drop_until, self.dropped, self.forwarded = target_port, 0.0, 0, 0
        self.live: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_for(self, seconds: float) -> None:
        self.drop_until = time.monotonic() + seconds
        for sock in list(self.live):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if time.monotonic() < self.drop_until:
                self.dropped += 1
                client.close()
                continue
            self.forwarded += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.live |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            self.live.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()


def test_a_server_unreachable_for_15_s_during_a_baseline_costs_neither_the_run_nor_its_tracking(tracked,
                                                                                               mlflow_server):
    """Every connection to the server dropped for 15 s from the moment the baseline makes its MLflow
    run, through its training and to its end: MLflow's retries (4, with backoff) carry what it knows
    is safe to send again, wf's own tries the writes it made safe (the run looked for before it is
    made again, the dataset input the store keeps once). The outcome is recorded, and the MLflow run,
    made once, is FINISHED with its dataset and every step once."""
    proxy = DroppingProxy(int(mlflow_server.rsplit(":", 1)[1]))
    configure(tracked, [("training.epochs", "6"), ("early_stopping.enabled", "false")])
    run = subprocess.Popen([*WF, "phase", "baseline", *OVERRIDE], cwd=tracked, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "COLUMNS": "200", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{proxy.port}"})
    deadline = time.time() + 120
    while proxy.forwarded < 4 and run.poll() is None and time.time() < deadline:  # the store opened
        time.sleep(0.05)
    assert run.poll() is None, "the baseline ended before the outage could begin"
    proxy.drop_for(15)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, out[-2000:] + err
    assert proxy.dropped > 0  # the run called the server during the outage
    assert "Traceback" not in out + err and "MLflow tracking stopped" not in out
    assert "baseline passed" in out
    record = _state(tracked)["runs"][-1]
    assert record["status"] == "completed" and record["passed"]
    client = _client(mlflow_server)
    made = client.search_runs([client.get_experiment_by_name("q").experiment_id],
                              filter_string=f"tags.`wf.run_id` = '{record['run_id']}'")
    assert [m.info.run_id for m in made] == [record["mlflow_run_id"]]  # made once
    mlflow_run = made[0]
    assert mlflow_run.info.status == "FINISHED" and len(mlflow_run.inputs.dataset_inputs) == 1
    steps = [int(r.split(",")[0]) for r in (tracked / record["dir"] / "logs" / "steps.csv").read_text().splitlines()[1:]]
    assert sorted(m.step for m in client.get_metric_history(mlflow_run.info.run_id, "train/loss")) == steps


def test_optimization_nests_its_trials_and_release_waits_for_the_pre_release_gate(wf, tracked):
    configure(tracked, [("optimization.n_trials", "4"), ("optimization.trial_epochs", "1"),
                        ("optimization.seeds", "2"), ("optimization.lr_find", "false"), ("training.epochs", "2"),
                        ("optimization.pruner", "none")])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=tracked).code == 0
    assert wf("decide", "optimize", "--reason", "a tracked sweep", cwd=tracked).code == 0
    r = _wf(tracked, "phase", "optimization", *OVERRIDE)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    client = _client(_uri(tracked))
    runs = _runs(client, "q")
    parents = [x for x in runs if x.data.tags.get("wf.phase") == "optimization" and "wf.kind" not in x.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    trials = [x for x in runs if x.data.tags.get("wf.kind") == "trial"]
    assert len(trials) == 4 and all(x.data.tags["mlflow.parentRunId"] == parent for x in trials)
    assert all(x.info.status == "FINISHED" and client.get_metric_history(x.info.run_id, "train/loss")
               for x in trials)
    comparison = [x for x in runs if x.data.tags.get("wf.kind") == "comparison"]
    assert len(comparison) == 4 and all(x.data.tags["mlflow.parentRunId"] == parent for x in comparison)
    # Optuna's own number and state on each trial's run; the sweep's result as the phase run's metrics
    facts = json.loads((tracked / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    numbers = {str(t["number"]): t["state"] for t in facts["trials"]}
    assert {x.data.tags["optuna.trial.number"]: x.data.tags["optuna.trial.state"] for x in trials} == numbers
    figures = parents[0].data.metrics
    assert figures["sweep/best_trial"] == facts["best"]["trial"] and figures["sweep/trials"] == 4
    assert figures["comparison/optimized_mean"] == pytest.approx(facts["comparison"]["optimized_mean"])
    assert "comparison/p_value" in figures and "comparison/baseline_std" in figures
    assert all(x.data.tags["mlflow.user"] and x.data.tags["mlflow.source.name"] for x in trials)  # nested too

    assert wf("checklist", "tick", "post_optimization", "sweep_reviewed", "chosen_config_committed",
              cwd=tracked).code == 0
    r = _wf(tracked, "phase", "finalization")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    registered = json.loads((tracked / ".wf" / "evidence" / "finalization.json").read_text())["facts"]["registered"]
    assert registered["name"] == "q" and registered["version"] == "1" and registered["max_abs_diff"] == 0.0
    version = client.get_model_version("q", "1")
    assert version.tags["wf.path"].startswith("setup → baseline") and "wf.test.accuracy" in version.tags
    # an MLflow 3 logged model made by the finalization's run, its test figures linked to it
    final = client.get_run(registered["run_id"])
    logged = client.get_logged_model(registered["model_id"])
    assert version.source == f"models:/{logged.model_id}" and logged.source_run_id == final.info.run_id
    summary = json.loads((tracked / ".wf" / "evidence" / "finalization.json").read_text())["facts"]["summary"]
    assert final.data.metrics["test/accuracy"] == pytest.approx(summary["accuracy"]["mean"])
    assert "test/accuracy_std" in final.data.metrics
    assert {m.key for m in logged.metrics or []} >= {"test/accuracy", "test/accuracy_std"}

    refused = _wf(tracked, "release")
    assert refused.returncode == 3 and "chosen_config_confirmed" in refused.stderr
    assert "model_card_reviewed" in refused.stderr and "Traceback" not in refused.stderr
    assert not client.get_registered_model("q").aliases
    assert wf("checklist", "tick", "pre_release", "chosen_config_confirmed", "model_card_reviewed",
              cwd=tracked).code == 0
    assert registered["tracking_uri"] == "sqlite:///mlflow.db"  # the project's own store, wherever it is
    copy = tracked.parent / "copy"
    shutil.copytree(tracked, copy)
    released = _wf(copy, "release", "--alias", "candidate")
    assert released.returncode == 0, released.stderr
    assert str(_client(_uri(copy)).get_model_version_by_alias("q", "candidate").version) == "1"
    assert "candidate" not in client.get_registered_model("q").aliases  # the original's store is untouched
    released = _wf(tracked, "release")
    assert released.returncode == 0, released.stderr
    assert str(client.get_model_version_by_alias("q", "champion").version) == "1"
    assert "Released: q version 1 as @champion" in _wf(tracked, "status").stdout

    import mlflow.pytorch

    mlflow.set_tracking_uri(_uri(tracked))
    mlflow.set_registry_uri(_uri(tracked))
    served = mlflow.pytorch.load_model("models:/q@champion")
    exported = torch.export.load(tracked / "export" / "model.pt2").module()
    batch = torch.randn(6, 1, 8, 8)
    assert torch.equal(served(batch), exported(batch))
    summary = _wf(tracked, "report", "summary").stdout
    assert "**Released:** `q` version 1 as `@champion`" in summary and "**MLflow:**" in summary


def test_verify_reads_the_checkpoints_and_kept_states_a_run_logged_to_mlflow(tmp_path, mlflow_store_template):
    """A CI runner with the tracking server and the data, not the training machine's runs/: `wf verify
    --from mlflow` recomputes the claims from what the run logged (monitoring.mlflow_log_checkpoints)."""
    assert _wf(tmp_path, "init", "p").returncode == 0
    project = tmp_path / "p"
    shutil.copy(mlflow_store_template, project / "mlflow.db")
    configure(project, [("monitoring.mlflow", "true"), ("monitoring.mlflow_log_checkpoints", "true"),
                        ("training.epochs", "3")])
    assert _wf(project, "phase", "setup").returncode == 0
    _wf(project, "checklist", "tick", "reproducibility", "data_documented", "config_committed")
    baseline = _wf(project, "phase", "baseline")
    assert baseline.returncode == 0, baseline.stdout[-2000:] + baseline.stderr
    run_dir = next((project / "runs").glob("baseline-*"))
    shutil.move(run_dir / "checkpoints", tmp_path / "elsewhere")  # git-ignored: not in a CI checkout
    local = _wf(project, "verify", "baseline", "--json")
    assert local.returncode == 1 and '"unverifiable"' in local.stdout
    fetched = _wf(project, "verify", "baseline", "--from", "mlflow", "--seed", "1", "--json")
    result = json.loads(fetched.stdout)
    assert fetched.returncode == 0 and result["passed"], fetched.stdout[-3000:]
    names = {c["name"] for c in result["phases"][0]["claims"]}
    assert {"initial weights", "kept training states", "config"} <= names
    assert not (run_dir / "checkpoints").exists()  # read from a scratch folder, nothing written into runs/
    bad = _wf(project, "verify", "--from", "mlfow")
    assert bad.returncode == 2 and "choose one of: runs, mlflow" in bad.stderr


def test_release_registers_the_verified_export_of_a_finalization_that_ran_without_mlflow(wf, project_copy,
                                                                                          mlflow_store_template):
    """MLflow turned on after finalization: turning it on re-opens no gate, and `wf release` registers
    the torch.export program the finalization verified (nothing trained again, the test split not
    read again), as a logged model and a version, then sets the alias; an export changed since is
    refused by the gate before anything is registered."""
    project = project_copy
    configure(project, [("finalization.seeds", "1")])
    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project).code == 0
    assert wf("decide", "finalize", "--reason", "a tracked release", cwd=project).code == 0
    r = _wf(project, "phase", "finalization")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    evaluated = [e for e in _state(project)["history"] if e["event"] == "test_evaluated"]
    assert wf("checklist", "tick", "pre_release", "chosen_config_confirmed", "model_card_reviewed",
              cwd=project).code == 0
    shutil.copy(mlflow_store_template, project / "mlflow.db")
    configure(project, [("monitoring.mlflow", "true")])
    assert wf("gate", "check", "finalization", cwd=project).code == 0  # a tracker re-opens no gate

    program = project / "export" / "model.pt2"
    kept = program.read_bytes()
    program.write_bytes(kept + b"\0")
    refused = _wf(project, "release")  # the gate finds the export changed: nothing is registered
    assert refused.returncode == 3 and "export_verified" in refused.stderr and "Traceback" not in refused.stderr
    assert not [e for e in _state(project)["history"] if e["event"] == "registered"]
    program.write_bytes(kept)

    released = _wf(project, "release")
    assert released.returncode == 0, released.stdout + released.stderr
    client = _client(_uri(project))
    version = client.get_model_version_by_alias("q", "champion")
    assert str(version.version) == "1" and version.tags["wf.registered_by"].startswith("wf release")
    assert version.tags["wf.gate.pre_release"] == "passed" and "wf.test.accuracy" in version.tags
    logged = client.get_logged_model(version.source.removeprefix("models:/"))  # the logged model it was made from
    assert "READY" in str(logged.status) and logged.tags["wf.export_sha256"] == version.tags["wf.export_sha256"]
    state = _state(project)
    assert [e for e in state["history"] if e["event"] == "test_evaluated"] == evaluated  # the test split unread
    assert [e["version"] for e in state["history"] if e["event"] == "registered"] == ["1"]
    again = _wf(project, "release", "--alias", "candidate")  # the version registered above, not a second
    assert again.returncode == 0, again.stderr
    assert str(client.get_model_version_by_alias("q", "candidate").version) == "1"
    assert [str(m.version) for m in client.search_model_versions("name = 'q'")] == ["1"]
    # state.json is committed: an edited `registered` event naming another version is refused
    other = client.create_model_version("q", source=logged.artifact_location)  # a version that is not this export
    state_path = project / ".wf" / "state.json"
    kept_state = state_path.read_text()
    forged = json.loads(kept_state)
    next(e for e in forged["history"] if e["event"] == "registered")["version"] = str(other.version)
    state_path.write_text(json.dumps(forged))
    refused = _wf(project, "release", "--alias", "forged")
    assert refused.returncode == 2 and "does not hold this finalization's export" in refused.stderr, refused.stderr
    assert "forged" not in client.get_registered_model("q").aliases
    state_path.write_text(kept_state)

    import mlflow.pytorch

    mlflow.set_tracking_uri(_uri(project))
    mlflow.set_registry_uri(_uri(project))
    served = mlflow.pytorch.load_model("models:/q@champion")
    batch = torch.randn(5, 1, 8, 8)
    assert torch.equal(served(batch), torch.export.load(program).module()(batch))

    # a gate on the path that no longer holds (the baseline's review unticked): the pre_release gate
    # alone does not release; --override-gate does, on the record
    checklist = project / "checklists" / "post_baseline.md"
    checklist.write_text(checklist.read_text().replace("- [x] Learning curves and results reviewed",
                                                       "- [ ] Learning curves and results reviewed"))
    refused = _wf(project, "release", "--alias", "late")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "gates on the path to it do not hold (baseline: results_reviewed" in " ".join(refused.stderr.split())
    assert "late" not in client.get_registered_model("q").aliases
    released = _wf(project, "release", "--alias", "late", "--override-gate", "demo for the lab meeting")
    assert released.returncode == 0, released.stdout + released.stderr
    assert client.get_model_version("q", "1").tags["wf.release.override"] == "demo for the lab meeting"
    assert "past closed gates** (baseline)" in wf("report", "summary", cwd=project).out
