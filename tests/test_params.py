"""nerpipe.core.params: YAML 1.2 numbers, unknown keys with suggestions, types, ranges, one message for all."""

import pytest

from nerpipe.core.errors import UserError
from nerpipe.core.params import Params, flatten, load_params, parse_params, read_yaml

SHA = {"train": "a" * 64, "valid": "b" * 64, "test": "c" * 64}


def valid_raw(**top):
    """The smallest params mapping that validates: data.sha256 has no default."""
    return {"data": {"sha256": dict(SHA)}, **top}


def problems_of(raw):
    with pytest.raises(UserError) as err:
        parse_params(raw)
    return str(err.value)


def test_lr_3e_05_is_a_float_under_yaml_1_2(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: 3e-05\ndata:\n  sha256:\n" + "".join(f"    {k}: {v}\n" for k, v in SHA.items()))
    params = parse_params(read_yaml(path))
    assert params.lr == 3e-05 and type(params.lr) is float
    assert load_params(path).lr == 3e-05


def test_pyyaml_safe_load_reads_3e_05_as_a_string():
    yaml = pytest.importorskip("yaml")
    raw = yaml.safe_load("lr: 3e-05\n")
    assert raw == {"lr": "3e-05"}  # YAML 1.1 needs a dot in the mantissa: why params.py uses ruamel
    assert "lr: expected a number, got '3e-05'" in problems_of(valid_raw(**raw))


def test_defaults_and_values_read(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: 1\ntrain:\n  batch_size: 8\n  method: lora\n  lora: {r: 4}\nprepare:\n  label_all_tokens: true\n"
                    "data:\n  source: /data/conll\n  sha256: {train: %s, valid: %s, test: %s}\n"
                    % (SHA["train"], SHA["valid"], SHA["test"]))
    params = load_params(path)
    assert params.lr == 1.0 and type(params.lr) is float  # an int where a float is expected is fine
    assert params.train.batch_size == 8 and params.train.epochs == 3
    assert params.train.method == "lora" and params.train.lora.r == 4 and params.train.lora.alpha == 16
    assert params.prepare.label_all_tokens is True and params.prepare.max_length == 128
    assert params.data.source == "/data/conll" and params.data.sha256 == SHA
    # The CoNLL-2003 file names are the defaults, not constants: another corpus sets its own.
    assert params.data.remote_files == {"train": "eng.train", "valid": "eng.testa", "test": "eng.testb"}
    assert params.data.local_files == {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}


def test_other_corpus_file_names_and_unchecked_local_files(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: /data/wnut\n  local_files: {train: train.tsv, valid: dev.tsv, test: test.tsv}\n"
                    "  sha256: {train: '', valid: '', test: '%s'}\n" % SHA["test"])
    data = load_params(path).data
    assert data.local_files == {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}
    assert data.sha256 == {"train": "", "valid": "", "test": SHA["test"]}
    assert data.remote_files["valid"] == "eng.testa" and not data.is_remote()


@pytest.mark.parametrize("raw, message", [
    (valid_raw(lrr=1e-5), "lrr: unknown key; did you mean lr?"),
    (valid_raw(train={"epoch": 2}), "train.epoch: unknown key; did you mean train.epochs?"),
    (valid_raw(prepare={"max_lenght": 64}), "prepare.max_lenght: unknown key; did you mean prepare.max_length?"),
])
def test_unknown_key_suggests_the_nearest(raw, message):
    text = problems_of(raw)
    assert "has 1 problem(s)" in text
    assert message in text


def test_unknown_key_far_from_all_lists_the_valid_keys():
    text = problems_of(valid_raw(evaluate={"zzz": 1}))
    assert ("evaluate.zzz: unknown key (valid keys: evaluate.batch_size, evaluate.bootstrap_samples, "
            "evaluate.bootstrap_seed)") in text


@pytest.mark.parametrize("raw, message", [
    (valid_raw(lr="fast"), "lr: expected a number, got 'fast'"),
    (valid_raw(train={"batch_size": "32"}), "train.batch_size: expected an integer, got '32'"),
    (valid_raw(train={"epochs": 2.5}), "train.epochs: expected an integer, got 2.5"),
    (valid_raw(train={"epochs": True}), "train.epochs: expected an integer, got True"),
    (valid_raw(prepare={"label_all_tokens": "yes"}), "prepare.label_all_tokens: expected true/false, got 'yes'"),
    (valid_raw(model={"name": 123}), "model.name: expected a string, got 123"),
    (valid_raw(train=[1, 2]), "train: expected a mapping, got [1, 2]"),
])
def test_wrong_type(raw, message):
    text = problems_of(raw)
    # A key with a bad type keeps its default, so it is not also reported as out of range.
    assert "has 1 problem(s)" in text
    assert message in text


@pytest.mark.parametrize("raw, message", [
    (valid_raw(lr=0), "lr: must be > 0, got 0.0"),
    (valid_raw(lr=-1e-5), "lr: must be > 0, got -1e-05"),
    (valid_raw(train={"batch_size": 0}), "train.batch_size: must be >= 1, got 0"),
    (valid_raw(train={"dropout": 1.0}), "train.dropout: must be in [0, 1), got 1.0"),
    (valid_raw(train={"method": "top-2"}), "train.method: must be one of full, top_layers, head, bitfit, lora, adapter, prompt, got 'top-2'"),
    (valid_raw(train={"top_layers": 0}), "train.top_layers: must be >= 1, got 0"),
    (valid_raw(train={"lora": {"dropout": 1.5}}), "train.lora.dropout: must be in [0, 1), got 1.5"),
    (valid_raw(train={"lora": {"rank": 4}}), "train.lora.rank: unknown key"),
    (valid_raw(train={"prompt": {"virtual_tokens": 0}}), "train.prompt.virtual_tokens: must be >= 1, got 0"),
    (valid_raw(evaluate={"bootstrap_samples": 1}), "evaluate.bootstrap_samples: must be >= 100 (the interval's "
                                                   "2.5th and 97.5th percentiles need that many resamples), got 1"),
    (valid_raw(prepare={"max_length": 4}), "prepare.max_length: must be in [8, 8192], got 4"),
    (valid_raw(prepare={"max_length": 16, "window_overlap": 9}),
     "prepare.window_overlap: must be in [0, max_length/2], got 9"),
    ({"data": {"sha256": {"train": "a" * 64}}}, "data.sha256: missing valid, test (need one per split: train, "
                                                "valid, test)"),
    ({"data": {"sha256": {**SHA, "train": "abc"}}},
     "data.sha256.train: expected a 64-character lower-case hex sha256 string, or \"\" to skip the check for a "
     "local directory; got 'abc'"),
    ({"data": {"sha256": {**SHA, "dev": "d" * 64}}}, "data.sha256: unknown split(s) dev; expected train, valid, test"),
    ({"data": {"sha256": {**SHA, "valid": ""}}},
     "data.sha256.valid: empty, but data.source is a URL; a download is always checked, so set the file's sha256"),
    ({"data": {"sha256": SHA, "local_files": {"train": "a.txt", "valid": "b.txt"}}},
     "data.local_files: missing test (need one per split: train, valid, test)"),
    ({"data": {"sha256": SHA, "remote_files": {"train": "a", "valid": "b", "test": "c", "dev": "d"}}},
     "data.remote_files: unknown split(s) dev; expected train, valid, test"),
    ({"data": {"sha256": SHA, "local_files": {"train": "a.txt", "valid": "/abs/b.txt", "test": ""}}},
     "data.local_files.valid: expected a file name relative to data.source, got '/abs/b.txt'"),
    ({"data": {"sha256": SHA, "local_files": {"train": "a.txt", "valid": "b.txt", "test": "a.txt"}}},
     "data.local_files: train and test name the same file 'a.txt'; each split needs a file of its own"),
])
def test_impossible_values(raw, message):
    assert message in problems_of(raw)


def test_empty_sha256_is_allowed_for_a_local_directory_only():
    local = parse_params({"data": {"source": "/data/conll", "sha256": {"train": "", "valid": "", "test": ""}}})
    assert local.data.sha256 == {"train": "", "valid": "", "test": ""}
    text = problems_of({"data": {"source": "https://example.org/conll", "sha256": {"train": "", "valid": "",
                                                                                    "test": SHA["test"]}}})
    assert "has 2 problem(s)" in text
    assert "data.sha256.train: empty, but data.source is a URL" in text and "data.sha256.valid: empty" in text


def test_every_data_problem_in_one_message():
    text = problems_of({"data": {"sha256": {"train": "x", "valid": "", "dev": "d" * 64},
                                 "local_files": {"train": "t", "valid": "t", "test": "../t"}}})
    assert [line.split(":")[0] for line in text.splitlines()[1:]] == [
        "  - data.sha256", "  - data.sha256", "  - data.local_files.test", "  - data.local_files",
        "  - data.sha256.train", "  - data.sha256.valid"]


def test_every_problem_in_one_message():
    raw = {"lrr": 1, "lr": -1, "train": {"batch_size": 0, "epoch": 1}, "prepare": {"max_length": "long"},
           "data": {"sha256": {"train": "a" * 64}}}
    text = problems_of(raw)
    lines = text.splitlines()
    assert lines[0] == "params.yaml has 6 problem(s):"
    assert sorted(line.split(":")[0] for line in lines[1:]) == [
        "  - data.sha256", "  - lr", "  - lrr", "  - prepare.max_length", "  - train.batch_size", "  - train.epoch"]


def test_source_name_in_message(tmp_path):
    path = tmp_path / "exp-params.yaml"
    path.write_text("lr: 0\n")
    with pytest.raises(UserError, match=r"^.*exp-params\.yaml has 2 problem\(s\)"):
        load_params(path)


def test_read_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1,\n")
    with pytest.raises(UserError) as err:
        read_yaml(broken)
    assert str(err.value).startswith(f"{broken}: not valid YAML")


def test_flatten():
    flat = flatten(parse_params(valid_raw(lr=3e-05, train={"batch_size": 8})))
    assert flat["lr"] == 3e-05
    assert flat["train.batch_size"] == 8
    assert flat["train.weight_decay"] == 0.01
    assert flat["model.name"] == "bert-base-cased"
    assert flat["data.sha256.valid"] == "b" * 64
    assert "data.sha256" not in flat and "train" not in flat
    assert flat["data.remote_files.valid"] == "eng.testa" and flat["data.local_files.test"] == "test.txt"
    # lr, data (source + 3 remote_files + 3 local_files + 3 sha256 + dataset: 3 splits and 6 more), model,
    # prepare, train (17 of its own, lora 4, adapter 2, prompt 1), evaluate (batch size, bootstrap samples and
    # seed), mlflow
    assert len(flat) == 1 + 19 + 1 + 5 + 17 + 4 + 2 + 1 + 3 + 2
    assert flat["data.dataset.splits.valid"] == "validation" and flat["data.dataset.tag_names"] == []
    assert flat["train.lora.target_modules"] == "auto" and flat["train.prompt.virtual_tokens"] == 20
    assert all(not isinstance(v, dict) for v in flat.values())


def test_flatten_keeps_an_empty_mapping_as_a_leaf():
    assert flatten(Params())["data.sha256"] == {}


@pytest.mark.parametrize("widths, message", [
    ("32", "train.static_widths: expected a list, got '32'"),
    ([32, 0], "train.static_widths: expected positive integers, got [32, 0]"),
    ([32, 1.5], "train.static_widths: expected positive integers, got [32, 1.5]"),
    ([64, 32], "train.static_widths: must be strictly ascending, got [64, 32]"),
])
def test_static_widths_are_ascending_positive_integers(widths, message):
    assert message in problems_of({"train": {"static_widths": widths}})


def test_static_widths_pad_a_batch_to_the_smallest_that_holds_it():
    from nerpipe.data.batching import padded_width

    assert parse_params(valid_raw(train={"static_widths": [16, 32, 64]})).train.static_widths == [16, 32, 64]
    assert [padded_width(n, widths=(16, 32, 64)) for n in (3, 16, 17, 64, 70)] == [16, 16, 32, 64, 70]
    assert [padded_width(n, 8, 514, widths=(20, 40)) for n in (13, 20, 21)] == [20, 40, 40]  # 13 -> 16 -> 20
    assert padded_width(13) == 13 and padded_width(13, 8) == 16  # no widths: as before
