"""A corpus of malformed files, one per case: configs, checklists, state files, datasets and
checkpoints. Each must give exit 2 and one message naming the file and the problem, with no
traceback, and leave the file as it was."""

import json
import shutil
import zipfile

import numpy as np
import pytest

from mlflow_core.workflow.scaffold import init_project

CONFIGS = [  # (case, text, fragment of the message)
    ("yaml_unclosed_flow", "training: {epochs: 3\n", "line"),
    ("yaml_tab_indent", "training:\n\tepochs: 3\n", "line"),
    ("yaml_bad_indent", "training:\n  epochs: 3\n lr: 1\n", "line"),
    ("python_tag", "training: !!python/object/apply:os.system ['true']\n", "line 1"),
    ("top_level_list", "- training\n- data\n", "mapping"),
    ("top_level_scalar", "just text\n", "mapping"),
    ("unknown_section", "trainin:\n  epochs: 3\n", "did you mean 'training'"),
    ("misspelled_key", "training:\n  learning_rat: 0.1\n", "did you mean 'learning_rate'"),
    ("epochs_text", "training:\n  epochs: ten\n", "training.epochs"),
    ("epochs_negative", "training:\n  epochs: -1\n", "training.epochs"),
    ("lr_zero", "training:\n  learning_rate: 0\n", "training.learning_rate"),
    ("lr_inf", "training:\n  learning_rate: .inf\n", "training.learning_rate: Input should be a finite number"),
    ("lr_nan", "training:\n  learning_rate: .nan\n", "training.learning_rate: Input should be a finite number"),
    ("epochs_absurd", "training:\n  epochs: 10000000000000000000000000000000000000000\n",
     "training.epochs: beyond any sensible value"),
    ("channels_absurd", "model:\n  channels: [8, 100000000000000]\n", "model.channels: beyond any sensible value"),
    ("optimizer_typo", "training:\n  optimizer: adamm\n", "training.optimizer"),
    ("device_gpu", "training:\n  device: gpu\n", "training.device"),
    ("precision_fp8", "training:\n  precision: fp8\n", "training.precision"),
    ("scheduler_unknown", "training:\n  scheduler:\n    name: linear\n", "training.scheduler.name"),
    ("schema_version_2", "schema_version: 2\n", "schema_version"),
    ("npz_without_path", "data:\n  source: npz\n", "data.path"),
    ("custom_without_target", "data:\n  source: custom\n", "data.target"),
    ("target_os_system", "model:\n  name: custom\n  target: 'os:system'\n",
     "model.target: 'os:system' is in Python's standard library"),
    ("target_builtin", "data:\n  source: custom\n  target: 'builtins:eval'\n", "data.target"),
    ("fractions_too_large", "data:\n  val_fraction: 0.5\n  test_fraction: 0.45\n", "under 10 %"),
    ("check_window_zero", "monitoring:\n  check_every_n_steps: 0\n", "monitoring.check_every_n_steps"),
    ("search_key_unknown", "optimization:\n  search_space:\n    training.lr: {type: float, low: 1, high: 2}\n",
     "'training.lr' is not a config setting"),
    ("search_log_low_zero", "optimization:\n  search_space:\n    training.learning_rate: "
     "{type: float, low: 0, high: 1, log: true}\n", "log sampling needs low > 0"),
    ("search_categorical_empty", "optimization:\n  search_space:\n    training.optimizer: {type: categorical}\n",
     "needs choices"),
    ("export_unknown", "finalization:\n  export: [tflite]\n", "finalization.export"),
]


@pytest.fixture
def project(tmp_path):
    return init_project(tmp_path / "p").root


def _clean(result):
    assert "Traceback" not in result.err + result.out


@pytest.mark.parametrize("case, text, fragment", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_malformed_config(wf, project, case, text, fragment):
    path = project / "configs" / f"{case}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    r = wf("config", "validate", str(path), cwd=project)
    assert r.code == 2, r.out
    assert f"{case}.yaml" in r.err and fragment in r.err, r.err
    _clean(r)
    assert path.read_text() == text


def test_config_that_is_not_text(wf, project):
    path = project / "configs" / "binary.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    r = wf("config", "validate", str(path), cwd=project)
    assert r.code == 2 and "binary.yaml" in r.err
    _clean(r)


CHECKLISTS = [  # (case, markdown after a title line, fragment)
    ("no_id", "- [ ] Something to check\n", "line 2: task item has no id"),
    ("duplicate_id", "- [ ] A <!-- id: a -->\n- [ ] B <!-- id: a -->\n", "line 3"),
    ("unknown_auto", "- [ ] A <!-- id: a; auto: astrology -->\n", "astrology"),
    ("empty_id", "- [ ] A <!-- id: -->\n", "line 2: task item has no id"),
    ("bad_id_characters", "- [ ] A <!-- id: a b/c -->\n", "line 2: id 'a b/c' must be lower_snake_case"),
    ("unknown_field", "- [ ] A <!-- id: a; owner: me -->\n", "line 2: unknown key(s) owner"),
]


@pytest.mark.parametrize("case, text, fragment", CHECKLISTS, ids=[c[0] for c in CHECKLISTS])
def test_malformed_checklist(wf, project, case, text, fragment):
    path = project / "checklists" / f"{case}.md"
    path.write_text("# Checklist\n" + text)
    r = wf("checklist", "show", case, cwd=project)
    assert r.code == 2, r.out
    assert f"{case}.md" in r.err and fragment in r.err, r.err
    _clean(r)


def test_a_checklist_linked_to_a_file_outside_the_project_is_refused_unread(wf, project, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("- [x] the maintainer's token is hunter2 <!-- id: token -->\n")
    path = project / "checklists" / "reproducibility.md"
    path.unlink()
    path.symlink_to(secret)
    for command in (("gate", "check", "setup"), ("checklist", "show", "reproducibility"), ("status",)):
        r = wf(*command, cwd=project)
        assert r.code == 2 and "outside the project; a checklist is never read from outside it" in r.err, r.err
        assert "hunter2" not in r.out + r.err
        _clean(r)


def test_a_config_linked_to_a_file_outside_the_project_is_refused_unread(wf, project, tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text("hunter2_token: 1\n")
    config = project / "training_config.yaml"
    config.unlink()
    config.symlink_to(secret)
    r = wf("config", "validate", cwd=project)
    assert r.code == 2 and "outside the project: a config is never read from outside it" in " ".join(r.err.split())
    assert "hunter2" not in r.out + r.err
    _clean(r)


STATES = [  # (case, content, fragment)
    ("truncated_json", '{"schema_version": 1, "runs": [', "not valid JSON"),
    ("empty", "", "not valid JSON"),
    ("a_list", "[]", "state.json"),
    ("future_version", '{"schema_version": 99}', "schema_version 99"),
    ("runs_not_a_list", '{"schema_version": 1, "runs": {}}', "runs"),
    ("unknown_event", '{"schema_version": 1, "history": [{"time": "t", "event": "teleport"}]}', "history"),
    ("run_without_id", '{"schema_version": 1, "runs": [{"phase": "setup"}]}', "runs"),
    ("binary", None, "state.json"),
    ("unknown_current_phase", '{"schema_version": 1, "current_phase": "bogus"}', "current_phase: Value error, 'bogus' is not a phase"),
    ("run_of_unknown_phase", '{"schema_version": 1, "runs": [{"run_id": "x", "phase": "warmup", "status": "completed", '
     '"started_at": "t", "dir": "runs/x"}]}', "runs.0.phase"),
    ("nested_200000_deep", '{"schema_version": 1, "runs": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested deeper"),
]


@pytest.mark.parametrize("case, content, fragment", STATES, ids=[s[0] for s in STATES])
def test_malformed_state(wf, project, case, content, fragment):
    path = project / ".wf" / "state.json"
    if content is None:
        path.write_bytes(b"\x00\xff\xfe\x80")
    else:
        path.write_text(content)
    before = path.read_bytes()
    r = wf("status", cwd=project)
    assert r.code == 2, r.out
    assert "state.json" in r.err and fragment in r.err, r.err
    _clean(r)
    assert path.read_bytes() == before


def _npz(path, **arrays):
    np.savez(path, **arrays)


def _first(folder):
    return sorted(folder.glob("*.npz"))[0]


DATASETS = {  # case -> (breaks the patches, fragment)
    "empty_train": (lambda d: [p.unlink() for p in (d / "train").glob("*.npz")], "no .npz files"),
    "missing_val": (lambda d: shutil.rmtree(d / "val"), "val"),
    "missing_label_key": (lambda d: _npz(_first(d / "train"), image=np.zeros((6, 32, 32), np.float32)),
                          "missing array"),
    "image_4d": (lambda d: _npz(_first(d / "train"), image=np.zeros((1, 6, 32, 32), np.float32), label=0),
                 "2 or 3 dimensions"),
    "label_vector": (lambda d: _npz(_first(d / "train"), image=np.zeros((6, 32, 32), np.float32),
                                    label=np.array([0, 1])), "single integer"),
    "not_a_zip": (lambda d: _first(d / "train").write_text("hello"), "cannot be read"),
    "truncated_zip": (lambda d: _first(d / "train").write_bytes(_first(d / "train").read_bytes()[:100]),
                      "cannot be read"),
    "pickled_object": (lambda d: np.savez(_first(d / "train"), image=np.array([{"a": 1}], dtype=object), label=0),
                       "holds Python objects"),
    "zip_without_arrays": (lambda d: zipfile.ZipFile(_first(d / "train"), "w").close(), "missing array"),
    "negative_label": (lambda d: _npz(_first(d / "val"), image=np.zeros((6, 32, 32), np.float32), label=-1),
                       "label -1 is outside 0.."),
    "mixed_shapes": (lambda d: _npz(_first(d / "train"), image=np.zeros((6, 16, 16), np.float32), label=0),
                     "(6, 16, 16) ×1 (first: "),
    "text_label": (lambda d: _npz(_first(d / "train"), image=np.zeros((6, 32, 32), np.float32), label="cat"),
                   "label 'cat' is text"),
    "fractional_label": (lambda d: _npz(_first(d / "train"), image=np.zeros((6, 32, 32), np.float32), label=2.7),
                         "label 2.7 is not a whole number"),
    "label_skips_classes": (lambda d: _npz(_first(d / "train"), image=np.zeros((6, 32, 32), np.float32), label=99),
                            "label 99 makes 100 classes"),
    "header_claims_224_gib": (lambda d: _forge_header(_first(d / "train")), "claims shape (240000, 1000, 256)"),
}


def _forge_header(path):
    """An .npz whose image header claims 224 GiB while the file holds a few KiB."""
    import io

    raw = io.BytesIO()
    np.save(raw, np.zeros((6, 32, 32), np.float32))
    data = raw.getvalue()
    end = data.index(b"\n") + 1
    header = data[:end].decode("latin1")
    forged = header.replace("(6, 32, 32)", "(240000, 1000, 256)")
    forged = forged[:-1].rstrip(" ").ljust(len(header) - 1) + "\n"  # the header keeps its length
    label = io.BytesIO()
    np.save(label, np.array(0))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image.npy", forged.encode("latin1") + data[end:])
        archive.writestr("label.npy", label.getvalue())


@pytest.mark.parametrize("case", list(DATASETS))
def test_malformed_dataset(wf, tmp_path, case):
    root = init_project(tmp_path / "p", example="patches").root
    data = root / "data" / "patches"
    breaks, fragment = DATASETS[case]
    breaks(data)
    r = wf("phase", "setup", cwd=root)
    assert r.code == 2, r.out[-2000:] + r.err
    assert "patches" in r.err and fragment in r.err, r.err
    _clean(r)


CHECKPOINTS = {  # case -> (writes the file, fragment)
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a readable checkpoint"),
    "text": (lambda p: p.write_text("not a checkpoint"), "not a readable checkpoint"),
    "pickle_payload": (lambda p: _torch_save(p, _Payload()), "refused"),
    "plain_dict": (lambda p: _torch_save(p, {"weights": 1}), "not a wf checkpoint"),
    "future_version": (lambda p: _rewrite(p, version=99), "version 99"),
    "another_model": (lambda p: _rewrite(p, model={"fc.weight": __import__("torch").zeros(3, 3)}),
                      "does not fit the model"),
}


class _Payload:
    def __reduce__(self):
        return (print, ("a pickle that runs code",))


def _torch_save(path, obj):
    import torch
    torch.save(obj, path)


def _rewrite(path, **changes):
    import torch
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_malformed_checkpoint(wf, project_copy, case):
    pytest.importorskip("torch")
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    run = next(r for r in reversed(state["runs"]) if r["phase"] == "baseline")
    path = project_copy / run["dir"] / "checkpoints" / "last_model.pt"
    breaks, fragment = CHECKPOINTS[case]
    breaks(path)
    before = path.read_bytes()
    r = wf("diagnose", "dead_relu", cwd=project_copy)
    assert r.code == 2, r.out[-2000:] + r.err
    assert "last_model.pt" in r.err and fragment in r.err, r.err
    _clean(r)
    assert path.read_bytes() == before


def test_evidence_nested_200000_deep_reads_as_damaged(wf, project_copy):
    """Evidence a pull request filled with nesting: the gate reads it as damaged, no RecursionError."""
    path = project_copy / ".wf" / "evidence" / "baseline.json"
    text = path.read_text()
    path.write_text(text[:-2] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}")
    for args in (("gate", "check", "baseline"), ("status",), ("gate", "check", "--all")):
        r = wf(*args, cwd=project_copy)
        assert r.code == (0 if args == ("status",) else 1), (args, r.out[-500:], r.err)  # status reports; gates fail
        _clean(r)


def test_a_data_path_that_is_not_a_data_folder_is_refused_before_it_is_read(wf, tmp_path):
    """data.path may name any folder of the machine: one without train/ and val/ is refused naming
    data.path, before a file of it is hashed, and the refused command leaves no manifest behind."""
    root = init_project(tmp_path / "p", example="patches").root
    config = root / "training_config.yaml"
    config.write_text(config.read_text().replace("path: data/patches", "path: /etc"))
    r = wf("phase", "setup", cwd=root)
    assert r.code == 2 and "data.path = '/etc'" in r.err and "no train/ or val/ folder" in r.err, r.err
    _clean(r)
    assert not list((root / ".wf").glob("manifests/*.json"))


def test_a_refused_phase_leaves_no_data_manifest_behind(wf, tmp_path):
    """Setup refused on bad data after the data was fingerprinted: the manifest it stored on the way
    is removed (no evidence names it)."""
    root = init_project(tmp_path / "p", example="patches").root
    _npz(_first(root / "data" / "patches" / "train"), image=np.zeros((6, 32, 32), np.float32), label=-1)
    r = wf("phase", "setup", cwd=root)
    assert r.code == 2, r.out[-1000:] + r.err
    assert not list((root / ".wf").glob("manifests/*.json"))
