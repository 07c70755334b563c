"""The MLflow model the train stage logs (nerpipe/predict/pyfunc_model.py): it answers with entities, loads
where nerpipe is not installed, and gives the same entities as `nerpipe predict` in process, from
mlflow.pyfunc and from `mlflow models serve`, which also holds a small run of tests/load_check.py's load check.

The model is the keyword model of tests/test_predict.py (a token's label depends on that token alone), logged
by nerpipe.track.trained_model._log_model into a SQLite store of the test's own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from transformers import AutoModelForTokenClassification

from nerpipe.cli import main
from nerpipe.track.trained_model import _log_model
from tests.load_check import load_test
from tests.server_process import raw_texts, serve_model
from tests.test_code_deps import PROJECT, import_closure
from tests.test_predict import build_keyword_model

# Offsets are code points: 😀 is one (two in UTF-16), é written with a combining accent two.
TEXTS = [
    'Reuters: "Maria met the U.S. team in Zürich, 東京 and New York."',
    "😀 John Smith flew to Paris (Germany) on Monday.",
    "e\u0301te\u0301 in Berlin—Peter’s “London” office, 1,000 km from München.",
    "",
    "Siemens",
]


def no_loading(*args, **kwargs):
    raise AssertionError("logging the model loaded it")


@pytest.fixture(scope="module")
def logged(tiny_model_dir, tmp_path_factory):
    """{uri, run_id, env, model_dir}: the keyword model logged as the train stage logs it, also registered
    as tiny-ner version 1."""
    root = tmp_path_factory.mktemp("served-model")
    model_dir = build_keyword_model(tiny_model_dir, root / "keyword-model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", uri)  # restored afterwards
        # Logging copies files and loads no model, so it never puts one on a GPU (issue 15, item 9).
        mp.setattr(AutoModelForTokenClassification, "from_pretrained", no_loading)
        experiment = mlflow.create_experiment("served", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=experiment) as run:
            _log_model(model_dir, register_as="tiny-ner")
    return {"uri": uri, "run_id": run.info.run_id, "model_dir": model_dir,
            "env": {**os.environ, "MLFLOW_TRACKING_URI": uri}}


@pytest.fixture
def tracking(logged, monkeypatch, tmp_path):
    """The test's store as MLflow's and nerpipe predict's tracking URI; no params.yaml in the working directory."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", logged["uri"])
    monkeypatch.chdir(tmp_path)
    return f"runs:/{logged['run_id']}/model"


@pytest.fixture(scope="module")
def server(logged, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_model(f"runs:/{logged['run_id']}/model", log, env=logged["env"]) as running:
        yield running


def predict_entities(capsys, model, texts, *flags):
    assert main(["predict", "--format", "jsonl", "--model", str(model), *flags, *texts]) == 0
    return [json.loads(line)["entities"] for line in capsys.readouterr().out.splitlines()]


def test_logged_model_holds_code_save_pretrained_settings_and_entity_signature(logged, tracking, tmp_path):
    from transformers import pipeline

    local = Path(mlflow.artifacts.download_artifacts(tracking, dst_path=str(tmp_path / "download")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert list(mlmodel["flavors"]) == ["python_function"]  # no transformers flavor: one copy of the weights
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["code"] == "code" and (local / "code/nerpipe/predict/pyfunc_model.py").is_file()
    # The model ships what prediction runs and nothing else: pyfunc_model.py and the package files it can
    # import (at any depth, and every fine-tuning method, chosen by name at run time), found from the
    # source as tests/test_code_deps.py finds a stage's deps. No training, tracking, report, bench- or
    # test-only code.
    shipped = {str(p.relative_to(local / "code")) for p in (local / "code").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    script = PROJECT / "nerpipe/predict/pyfunc_model.py"
    imported = {str(f.relative_to(PROJECT)) for f in import_closure(script)} | {"nerpipe/predict/pyfunc_model.py"}
    assert shipped == imported, (sorted(shipped - imported), sorted(imported - shipped))
    assert "nerpipe/model/methods/lora.py" in shipped
    assert not [f for f in shipped if f.startswith(("nerpipe/train/", "nerpipe/report/", "nerpipe/predict/server_"))]
    assert {k: v["path"] for k, v in flavor["artifacts"].items()} == {"save_pretrained": "artifacts/save_pretrained"}
    # The model's description travels inside the save_pretrained copy, byte for byte.
    assert (local / "artifacts/save_pretrained/nerpipe_model.json").read_bytes() == (
        logged["model_dir"] / "nerpipe_model.json").read_bytes()
    output = json.loads(mlmodel["signature"]["outputs"])
    assert output[0]["type"] == "array" and output[0]["items"]["properties"] == {
        "text": {"type": "string", "required": True}, "type": {"type": "string", "required": True},
        "start": {"type": "long", "required": True}, "end": {"type": "long", "required": True},
        "score": {"type": "double", "required": True}}
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "string", "required": True}]
    # The save_pretrained directory is complete (tokenizer included): transformers loads it as it is.
    tagger = pipeline("token-classification", model=str(local / "artifacts/save_pretrained"),
                      aggregation_strategy="first", device="cpu")
    assert [(e["entity_group"], e["start"], e["end"]) for e in tagger("John Smith flew to Paris.")] == [
        ("PER", 0, 10), ("LOC", 19, 24)]


# Run with -I (no PYTHONPATH, no working directory on sys.path) and without the editable install's
# import hook, so nerpipe can only come from the model's code/ directory.
HIDDEN_NERPIPE = """
import importlib.util, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("nerpipe") is None, "nerpipe is importable before the model loads"
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1], dst_path=sys.argv[2])
import nerpipe
print(json.dumps({"nerpipe": nerpipe.__file__, "predictions": model.predict(json.loads(sys.argv[3]))}))
"""


def test_model_loads_and_predicts_where_nerpipe_is_not_installed(logged, tracking, capsys, tmp_path):
    expected = predict_entities(capsys, logged["model_dir"], TEXTS)
    download = tmp_path / "download"
    download.mkdir()
    result = subprocess.run([sys.executable, "-I", "-c", HIDDEN_NERPIPE, tracking, str(download), json.dumps(TEXTS)],
                            capture_output=True, text=True, env=logged["env"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["nerpipe"] == str(download / "model/code/nerpipe/__init__.py")
    assert answer["predictions"] == expected


def test_a_model_without_a_description_is_not_logged(tiny_model_dir, tmp_path):
    from nerpipe.core.errors import UserError

    with pytest.raises(UserError, match="no nerpipe_model.json, so its window, context and precision settings"):
        _log_model(tiny_model_dir)


def test_same_entities_from_nerpipe_predict_pyfunc_and_http(logged, tracking, server, capsys):
    expected = predict_entities(capsys, logged["model_dir"], TEXTS)
    # The keyword model tags every unknown word (Zürich, U.S., 東, 😀, —, ’, “) I-LOC.
    assert [[(e["text"], e["type"], e["start"], e["end"]) for e in found] for found in expected] == [
        [("Reuters", "ORG", 0, 7), ("Maria", "PER", 10, 15), ("U.S.", "LOC", 24, 28), ("Zürich", "LOC", 37, 43),
         ("東京", "LOC", 45, 47), ("New York", "LOC", 52, 60)],
        [("😀", "LOC", 0, 1), ("John Smith", "PER", 2, 12), ("Paris", "LOC", 21, 26)],
        [("e\u0301te\u0301", "LOC", 0, 5), ("Berlin—", "LOC", 9, 16), ("Peter", "PER", 16, 21),
         ("’s “", "LOC", 21, 25), ("London” office", "LOC", 25, 39), ("km from München", "LOC", 47, 62)],
        [],
        [("Siemens", "ORG", 0, 7)]]
    # nerpipe predict from the registry and the run, with the settings logged with the model
    assert predict_entities(capsys, tracking, TEXTS) == expected
    assert predict_entities(capsys, "models:/tiny-ner/1", TEXTS) == expected
    assert mlflow.pyfunc.load_model(tracking).predict(TEXTS) == expected
    together = requests.post(f"{server.url}/invocations", json={"inputs": TEXTS}, timeout=60)
    assert together.status_code == 200 and together.json() == {"predictions": expected}
    for text, entities in zip(TEXTS, expected):
        alone = requests.post(f"{server.url}/invocations", json={"inputs": [text]}, timeout=60)
        assert alone.json() == {"predictions": [entities]}


def test_bad_requests_get_a_4xx_that_says_what_is_wrong(server):
    for body, status, says in [
        (b'{"inputs": ["John', 400, "Ensure that input is a valid JSON formatted string"),
        (b'{"text": ["John"]}', 400, "must be a dictionary with 'inputs' key"),
        (b'{"inputs": "John"}', 400, "Expected list, but got str"),
        (b'{"inputs": [null]}', 400, "Expected type str, but got NoneType"),
        (b'{"inputs": [42]}', 400, "Expected type str, but got int"),
    ]:
        response = requests.post(f"{server.url}/invocations", data=body, timeout=60,
                                 headers={"Content-Type": "application/json"})
        assert (response.status_code, says in response.json()["message"]) == (status, True), response.text
    assert requests.get(f"{server.url}/ping", timeout=10).status_code == 200


def test_small_load_test(tracking, server, fixture_dir):
    """tests/load_check.py's load check, small: 3 clients, 40 requests of every kind (a 5,000-word document included)."""
    summary = load_test(server.url, tracking, raw_texts(fixture_dir / "test.txt"), 40, clients=3,
                        process=server.process)
    assert summary["failures"] == [] and summary["server_up"]
    assert summary["statuses"] == {"200": 34, "400": 6}
    assert set(summary["by_kind"]) == {"sentence", "batch", "empty", "one_word", "document", "non_latin",
                                       "invalid_json", "wrong_field", "not_a_string"}


def test_linear_layers_stored_in_bf16_give_the_scores_of_autocast_bit_for_bit(tiny_model_dir):
    """cast_linear_layers_for_bf16 only saves autocast's per-forward casts: same scores to the last bit."""
    import copy

    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from nerpipe.predict.text import cast_linear_layers_for_bf16, tag_words

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir)
    cast = cast_linear_layers_for_bf16(copy.deepcopy(model))
    assert cast.classifier.weight.dtype == torch.bfloat16
    assert cast.bert.embeddings.LayerNorm.weight.dtype == torch.float32  # autocast runs norms in fp32
    words = [t.split() for t in ("John Smith flew to Paris .", "Reuters said Peter Smith visited Washington .", "")]
    cpu = torch.device("cpu")
    ids, scores = tag_words(model, tokenizer, words, 24, 4, 2, cpu, bf16=True)
    cast_ids, cast_scores = tag_words(cast, tokenizer, words, 24, 4, 2, cpu, bf16=True)
    fp32_ids, fp32_scores = tag_words(model, tokenizer, words, 24, 4, 2, cpu, bf16=False)
    assert all(np.array_equal(a, b) for a, b in zip(ids + scores, cast_ids + cast_scores))
    assert not all(np.array_equal(a, b) for a, b in zip(scores, fp32_scores))  # autocast did run in bf16
