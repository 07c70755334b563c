"""Bad input at the stage level: a clear error (file:line or the param key, what was found, what is
expected), exit code 2, no traceback, and no output touched. Odd but valid input is accepted and
handled right: CRLF, tabs, a BOM, extra blank lines, IOB2, words with no sub-tokens, sentences longer
than the model's positions.

tests/test_conll.py, test_params.py and test_fetch.py check each message at the function level; here
the stage scripts run as `python stages/<script> ...` does: in this process through runpy for the
many cases (seconds), and as real subprocesses for one case of each kind (exit code, stderr).
"""

import json
import os
import re
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, RobertaConfig, RobertaForTokenClassification, ViTConfig

from nerpipe.core.errors import UserError
from nerpipe.core.params import SPLITS
from nerpipe.core.set_params import set_params
from nerpipe.data.conll import format_predictions, iob1_to_iob2, read_predictions
from nerpipe.data.prepared import PreparedSplit
from nerpipe.evaluate.splits import evaluate_splits
from nerpipe.model.loading import check_max_length, load_for_training, load_tokenizer
from tests.conftest import CONLL_LABELS
from tests.pipeline_repo import PROJECT, tiny_overrides
from tests.tiny_model import build_tiny_model, build_tokenizer

EARLIER = '["an earlier, good output"]\n'


@pytest.fixture
def params(tmp_path, fixture_dir, fixture_sha256, tiny_model_dir):
    """Write params.yaml for the tiny profile with `overrides`; returns its path."""
    def write(*overrides):
        path = tmp_path / "params.yaml"
        shutil.copy(PROJECT / "params.yaml", path)
        set_params(path, [*tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir), *overrides])
        return path
    return write


@pytest.fixture
def raw(tmp_path, fixture_dir, fixture_sha256):
    """A copy of the fixtures as the download stage leaves them (data/raw), sources.json included."""
    directory = tmp_path / "raw"
    directory.mkdir()
    for split in SPLITS:
        shutil.copyfile(fixture_dir / f"{split}.txt", directory / f"{split}.txt")
    (directory / "sources.json").write_text(json.dumps(
        {split: {"file": str(fixture_dir / f"{split}.txt"), "sha256": fixture_sha256[split]} for split in SPLITS}))
    return directory


def run_stage(script, *args, capsys, monkeypatch):
    """`python stages/<script> args`, in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    capsys.readouterr()  # what the test printed before
    code = 0
    try:
        runpy.run_path(str(PROJECT / "stages" / script), run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def run_stage_process(script, *args, cwd):
    result = subprocess.run([sys.executable, str(PROJECT / "stages" / script), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    return result.returncode, result.stdout, result.stderr


def earlier_output(tmp_path):
    """data/prepared from an earlier good run: a failed run must leave it exactly as it was."""
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "labels.json").write_text(EARLIER)
    return out


def assert_untouched(out):
    assert [p.name for p in out.iterdir()] == ["labels.json"] and (out / "labels.json").read_text() == EARLIER
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporaries left


# --- bad CoNLL files -------------------------------------------------------------------------------

LINE = "Peter NNP B-NP I-PER\n"
TAGS_EXPECTED = (" in the last column; expected O, or B-, I-, E- or S- (IOB1, IOB2 or BIOES) and an entity type of "
                 "letters, digits, hyphens or underscores (B-PER, I-creative-work)")
BAD_FILES = {
    "too few columns": ("valid.txt", LINE + "visited VBD I-VP\n", 2,
                        "found 3 column(s) in 'visited VBD I-VP'; expected 4 like the file's first token line "
                        "(word ... NER-tag)"),
    "bad type": ("test.txt", LINE + "Foo NNP I-NP B-FOO.\n", 2, "unknown NER tag 'B-FOO.'" + TAGS_EXPECTED),
    "unknown prefix": ("train.txt", "\n\n" + LINE + "Foo NNP I-NP X-PER\n", 4,
                       "unknown NER tag 'X-PER'" + TAGS_EXPECTED),
    "prefix alone": ("train.txt", LINE + "Foo NNP I-NP I-\n", 2, "unknown NER tag 'I-'" + TAGS_EXPECTED),
    "not utf-8": ("valid.txt", LINE.encode() + "Caf\u00e9 NNP I-NP I-LOC\n".encode("latin-1"), 2,
                  "byte 0xe9 at column 4 is not valid UTF-8; re-encode the file as UTF-8"),
    "empty split": ("test.txt", "", None, "no sentences found; expected CoNLL lines 'word ... NER-tag' (the word "
                    "first, the tag last)"),
    "no entities": ("valid.txt", "The DT B-NP O\ncat NN I-NP O\n", None,
                    "1 sentences but not one entity tag; is this the right file?"),
    "missing file": ("test.txt", None, None, "file not found"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_conll_names_file_and_line_and_keeps_the_earlier_output(case, raw, params, tmp_path, fixture_dir,
                                                                    capsys, monkeypatch):
    name, content, line, expected = BAD_FILES[case]
    if content is None:
        (raw / name).unlink()
    else:
        (raw / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    out = earlier_output(tmp_path)
    code, _, err = run_stage("prepare.py", "--raw", raw, "--out", out, "--params", params(), capsys=capsys,
                             monkeypatch=monkeypatch)
    # The copy in data/raw and, for a line of it, the user's file it was copied from: the one to edit.
    at = f":{line}" if line else ""
    where = f"{raw / name}" if content is None else f"{raw / name}{at} (copied from {fixture_dir / name}{at})"
    assert (code, err) == (2, f"error: {where}: {expected}\n")
    assert_untouched(out)


def test_bad_conll_as_a_process_exits_2_without_traceback(raw, params, tmp_path, fixture_dir):
    (raw / "valid.txt").write_text(LINE + "visited VBD I-VP\n")
    out = earlier_output(tmp_path)
    code, _, err = run_stage_process("prepare.py", "--raw", raw, "--out", out, "--params", params(), cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err == (f"error: {raw / 'valid.txt'}:2 (copied from {fixture_dir / 'valid.txt'}:2): found 3 column(s) in "
                   "'visited VBD I-VP'; expected 4 like the file's first token line (word ... NER-tag)\n")
    assert_untouched(out)


def test_prepare_without_sources_json_says_to_run_download(raw, params, tmp_path, capsys, monkeypatch):
    (raw / "sources.json").unlink()
    out = earlier_output(tmp_path)
    code, _, err = run_stage("prepare.py", "--raw", raw, "--out", out, "--params", params(), capsys=capsys,
                             monkeypatch=monkeypatch)
    assert (code, err) == (2, f"error: {raw / 'sources.json'}: file not found; it is written by the download stage "
                              "with the split copies, so run `dvc repro download`\n")
    assert_untouched(out)


def copy_of_fixtures(fixture_dir, directory):
    directory.mkdir()
    for split in SPLITS:
        shutil.copyfile(fixture_dir / f"{split}.txt", directory / f"{split}.txt")
    return directory


def test_checksum_mismatch_keeps_the_earlier_download(raw, params, fixture_dir, tmp_path):
    source = copy_of_fixtures(fixture_dir, tmp_path / "source")
    (source / "valid.txt").write_text((fixture_dir / "valid.txt").read_text() + "Berlin NNP I-NP I-LOC\n")
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    code, out, err = run_stage_process("download.py", "--out", raw, "--params", params(f"data.source={source}"),
                                       cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {source / 'valid.txt'}: sha256 mismatch for split 'valid'\n  expected ")
    assert "(data.sha256.valid in params.yaml)" in err
    assert err.endswith(f"Nothing was written to {raw}. If you really mean to use other data, update data.sha256 "
                        "(\"\" skips the check for a local directory).\n")
    assert out == ""  # train and test matched, but nothing is written until every split does
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw", "source"]  # no temporaries


def test_a_missing_split_writes_nothing(params, fixture_dir, tmp_path, capsys, monkeypatch):
    source = copy_of_fixtures(fixture_dir, tmp_path / "source")
    (source / "valid.txt").unlink()
    out = tmp_path / "data" / "raw"
    code, stdout, err = run_stage("download.py", "--out", out, "--params", params(f"data.source={source}"),
                                  capsys=capsys, monkeypatch=monkeypatch)
    assert (code, stdout) == (2, "")
    assert err == (f"error: data.source {source}: 1 split(s) missing, nothing was copied:\n"
                   "  valid: no eng.testa or valid.txt (data.remote_files.valid, data.local_files.valid)\n"
                   "Point data.source at the directory holding the corpus, or set data.local_files to its file names\n")
    assert not (tmp_path / "data").exists()  # no train.txt left behind, not even the directory


def test_empty_sha256_for_a_local_directory_is_recorded_not_checked(params, fixture_dir, fixture_sha256, tmp_path,
                                                                    capsys, monkeypatch):
    out = tmp_path / "raw"
    code, stdout, err = run_stage("download.py", "--out", out, "--params", params("data.sha256.valid="),
                                  capsys=capsys, monkeypatch=monkeypatch)
    assert (code, err) == (0, "")
    assert stdout.splitlines() == [
        f"train: {fixture_dir / 'train.txt'} -> {out / 'train.txt'} (sha256 verified)",
        f"valid: {fixture_dir / 'valid.txt'} -> {out / 'valid.txt'} (sha256 {fixture_sha256['valid']} recorded, "
        "not checked: data.sha256.valid is empty)",
        f"test: {fixture_dir / 'test.txt'} -> {out / 'test.txt'} (sha256 verified)"]
    assert json.loads((out / "sources.json").read_text())["valid"] == {
        "file": str(fixture_dir / "valid.txt"), "sha256": fixture_sha256["valid"]}


def test_empty_sha256_for_a_url_is_refused(tmp_path, capsys, monkeypatch):
    path = tmp_path / "params.yaml"
    text = (PROJECT / "params.yaml").read_text()
    path.write_text(re.sub(r"(\n    test:) [0-9a-f]{64}\n", r'\1 ""\n', text))
    code, out, err = run_stage("check_params.py", path, capsys=capsys, monkeypatch=monkeypatch)
    assert (code, out) == (2, "")
    assert err == (f"error: {path} has 1 problem(s):\n  - data.sha256.test: empty, but data.source is a URL; a "
                   "download is always checked, so set the file's sha256 (\"\" is allowed only for a local "
                   "directory)\n")


# --- bad params ------------------------------------------------------------------------------------

def test_params_problems_are_all_in_one_message(tmp_path):
    path = tmp_path / "params.yaml"
    text = (PROJECT / "params.yaml").read_text()
    text = text.replace("lr: 5.0e-05", "lr: 0").replace("  batch_size: 32", "  batch_size: 0\n  epoch: 3")
    path.write_text(text.replace("  dropout: 0.1", "  dropout: high", 1))  # train's, not train.lora's
    code, out, err = run_stage_process("check_params.py", path, cwd=tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err == (f"error: {path} has 4 problem(s):\n"
                   "  - train.epoch: unknown key; did you mean train.epochs? (valid keys: train.epochs, "
                   "train.max_steps, train.batch_size, train.grad_accum_steps, train.weight_decay, "
                   "train.warmup_ratio, train.dropout, train.max_grad_norm, train.seed, train.method, train.top_layers, "
                   "train.lora, train.adapter, train.prompt, train.eval_every_steps, train.patience, train.checkpoint_every, train.bf16, train.static_widths, train.processes)\n"
                   "  - train.dropout: expected a number, got 'high'\n"
                   "  - lr: must be > 0, got 0.0\n"
                   "  - train.batch_size: must be >= 1, got 0\n")


def test_max_length_above_the_model_limit_fails_before_data_work(params, tmp_path, tiny_model_dir, capsys,
                                                                 monkeypatch):
    code, _, err = run_stage("prepare.py", "--raw", tmp_path / "no-such-dir", "--out", tmp_path / "prepared",
                             "--params", params("prepare.max_length=1024"), capsys=capsys, monkeypatch=monkeypatch)
    assert (code, err) == (2, f"error: prepare.max_length: 1024 exceeds what model {str(tiny_model_dir)!r} "
                              "supports (512 positions); set prepare.max_length <= 512\n")
    assert not (tmp_path / "prepared").exists()


def test_max_length_limit_counts_roberta_position_offset(tmp_path):
    """RoBERTa-style embeddings start position ids at pad_token_id + 1: 514 embeddings take 512 tokens."""
    config = RobertaConfig(vocab_size=105, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=514, pad_token_id=1)
    model = RobertaForTokenClassification(config)
    model.save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)  # model_max_length 512, as roberta-base's says
    tokenizer = load_tokenizer(str(tmp_path))
    check_max_length(512, str(tmp_path), tokenizer)
    with pytest.raises(UserError, match=r"prepare.max_length: 513 exceeds .* \(512 positions\)"):
        check_max_length(513, str(tmp_path), tokenizer)
    with pytest.raises(RuntimeError, match="out of bounds"):  # what 513 would have done in training
        model(input_ids=torch.full((1, 513), 5))


# --- bad model.name --------------------------------------------------------------------------------

def bin_only_model(directory):
    build_tiny_model(directory, labels=CONLL_LABELS)
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


def custom_code_model(directory):
    """A config whose class lives in the model's own Python file, which must never run."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(
        {"model_type": "evil-bert", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (directory / "configuration_evil.py").write_text(
        f"open({str(directory / 'RAN')!r}, 'w').close()\n"
        "from transformers import PretrainedConfig\n\n\nclass EvilConfig(PretrainedConfig):\n"
        "    model_type = 'evil-bert'\n")


BAD_MODELS = {
    "no such directory": (lambda d: None, "it is neither a local directory nor a model id the Hugging Face hub "
                          "answered for"),
    "clip": (lambda d: CLIPConfig().save_pretrained(d), "model type 'clip' has no token-classification head"),
    "vision": (lambda d: ViTConfig().save_pretrained(d), "model type 'vit' has no token-classification head"),
    "pickled weights only": (bin_only_model, "it holds pytorch_model.bin but has no *.safetensors weights, and only "
                             "safetensors are loaded"),
    "custom code": (custom_code_model, "it needs its own Python code to load (auto_map in config.json), and "
                    "nerpipe never runs a model's code (trust_remote_code=False)"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_fails_before_any_data_work_naming_it(case, raw, params, tmp_path, capsys, monkeypatch):
    make, expected = BAD_MODELS[case]
    model_dir = tmp_path / "model"
    make(model_dir)
    (raw / "train.txt").write_text("not CoNLL at all\n")  # were the data read first, this would be the error
    code, _, err = run_stage("prepare.py", "--raw", raw, "--out", tmp_path / "prepared",
                             "--params", params(f"model.name={model_dir}"), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2
    assert err.startswith(f"error: model.name {str(model_dir)!r}: {expected}")
    assert not (tmp_path / "prepared").exists()
    assert not (model_dir / "RAN").exists()


def test_bad_model_as_a_process_exits_2_without_traceback(raw, params, tmp_path):
    code, _, err = run_stage_process("prepare.py", "--raw", raw, "--out", tmp_path / "prepared",
                                     "--params", params(f"model.name={tmp_path / 'nope'}"), cwd=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: model.name {str(tmp_path / 'nope')!r}: ")


def test_training_loads_only_safetensors(tmp_path):
    bin_only_model(tmp_path / "model")
    with pytest.raises(UserError, match="has no \\*.safetensors weights"):
        load_for_training(str(tmp_path / "model"), CONLL_LABELS, 0.1, 42)


# --- odd but valid input ---------------------------------------------------------------------------

def prepare(raw, out, params, capsys, monkeypatch):
    code, _, err = run_stage("prepare.py", "--raw", raw, "--out", out, "--params", params, capsys=capsys,
                             monkeypatch=monkeypatch)
    assert code == 0, err
    return {split: PreparedSplit(out, split) for split in SPLITS}


def iob2_to_bioes(tags):
    """S- for a one-word entity, E- for the last word of a longer one."""
    out = []
    for i, tag in enumerate(tags):
        last = i + 1 == len(tags) or tags[i + 1] != "I-" + tag[2:]
        out.append(tag if tag == "O" or not last else ("S-" if tag[0] == "B" else "E-") + tag[2:])
    return out


def to_iob2(text, convert=iob1_to_iob2):
    """The same file with every entity starting with B- (the tag is the last column), or other `convert`."""
    blocks = [block.splitlines() for block in text.split("\n\n")]
    out = []
    for lines in blocks:
        tags = convert([line.split()[-1] if line and not line.startswith("-DOCSTART-") else "O" for line in lines])
        out.append("\n".join(line.rsplit(" ", 1)[0] + " " + tag if line and not line.startswith("-DOCSTART-")
                             else line for line, tag in zip(lines, tags)))
    return "\n\n".join(out)


def test_crlf_tabs_bom_blank_lines_iob2_and_bioes_prepare_exactly_like_the_original(raw, params, tmp_path, capsys,
                                                                                   monkeypatch):
    original = prepare(raw, tmp_path / "original", params(), capsys, monkeypatch)
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copyfile(raw / "sources.json", odd / "sources.json")
    for split in SPLITS:
        text = (raw / f"{split}.txt").read_text()
        if split == "train":
            text = to_iob2(text)
            assert text != (raw / "train.txt").read_text()
        if split == "valid":
            text = to_iob2(text, lambda tags: iob2_to_bioes(iob1_to_iob2(tags)))
            assert "S-LOC" in text and "E-PER" in text
        text = text.replace(" ", "\t").replace("\n\n", "\n\n\n\n")
        (odd / f"{split}.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    again = prepare(odd, tmp_path / "prepared", params(), capsys, monkeypatch)
    for split in SPLITS:
        for name in ("words", "tags", "doc_id"):
            assert again[split].sentences[name] == original[split].sentences[name]
        for name in ("input_ids", "labels", "word_index", "sentence_id"):
            a, b = getattr(again[split].examples, name), getattr(original[split].examples, name)
            if hasattr(a, "values"):
                assert (a.values.tolist(), a.offsets.tolist()) == (b.values.tolist(), b.offsets.tolist())
            else:
                assert a.tolist() == b.tolist()


def test_words_without_subtokens_keep_their_labels_and_are_scored(raw, params, tmp_path, tiny_model_dir,
                                                                 tiny_tokenizer, capsys, monkeypatch):
    words, tags = ["Peter", "\u200b", "\x07", "London"], ["I-PER", "I-MISC", "O", "I-LOC"]
    with open(raw / "valid.txt", "a") as f:
        f.write("\n" + "".join(f"{w} NNP I-NP {t}\n" for w, t in zip(words, tags)))
    data = prepare(raw, tmp_path / "prepared", params(), capsys, monkeypatch)["valid"]
    sentence = len(data.words) - 1
    assert data.words[sentence] == words and data.gold[sentence] == ["B-PER", "B-MISC", "O", "B-LOC"]
    [window] = [i for i in range(len(data.examples)) if data.examples.sentence_id[i] == sentence]
    input_ids = data.examples.input_ids.row(window)
    assert tiny_tokenizer.convert_ids_to_tokens(input_ids.tolist()) == [
        "[CLS]", "Peter", "[UNK]", "[UNK]", "London", "[SEP]"]
    assert data.examples.word_index.row(window).tolist() == [-1, 0, 1, 2, 3, -1]
    label2id = {label: i for i, label in enumerate(CONLL_LABELS)}
    assert data.examples.labels.row(window).tolist() == [-100, label2id["B-PER"], label2id["B-MISC"], label2id["O"],
                                                         label2id["B-LOC"], -100]

    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.0, 42).eval()
    results = evaluate_splits(model, tmp_path / "prepared", 0, 8, torch.device("cpu"))["dev"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids.tolist()])).logits[0]  # (seq_len, num_labels)
    # Each word's prediction is read at its own position, the [UNK]s included.
    assert results["pred"][sentence] == [CONLL_LABELS[int(i)] for i in logits[1:5].argmax(-1)]
    gold, pred = results["data"].gold, results["pred"]
    assert [len(p) for p in pred] == [len(w) for w in results["data"].words]
    n_words = sum(len(g) for g in gold)
    accuracy = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)) / n_words
    assert results["scores"]["token"]["accuracy"] == round(accuracy, 6)  # the two words count
    assert results["scores"]["token"]["per_tag"]["B-MISC"]["support"] == sum(g.count("B-MISC") for g in gold)
    written = format_predictions(data.words, gold, pred)
    assert f"\u200b B-MISC {pred[sentence][1]}\n\x07 O {pred[sentence][2]}\n" in written
    (tmp_path / "predictions.conll").write_text(written)
    assert read_predictions(tmp_path / "predictions.conll") == (data.words, gold, pred)


def test_sentence_longer_than_the_model_positions_is_windowed_and_fully_predicted(
        raw, params, tmp_path, tiny_model_dir, capsys, monkeypatch):
    n = 250  # Washington -> Wash ##ing ##ton: 750 sub-tokens, against 512 positions
    tags = ["I-LOC" if i % 3 == 0 else "O" for i in range(n)]
    with open(raw / "test.txt", "a") as f:
        f.write("\n" + "".join(f"Washington NNP I-NP {t}\n" for t in tags))
    data = prepare(raw, tmp_path / "prepared", params("prepare.max_length=512", "prepare.window_overlap=32"),
                   capsys, monkeypatch)["test"]
    sentence = len(data.words) - 1
    windows = [i for i in range(len(data.examples)) if data.examples.sentence_id[i] == sentence]
    lengths = [len(data.examples.input_ids.row(i)) for i in windows]
    assert len(windows) == 2 and max(lengths) == 512
    owned = sorted(w for i in windows for w in data.examples.word_index.row(i).tolist() if w >= 0)
    assert owned == list(range(n))  # every word owned by exactly one window
    label2id = {label: i for i, label in enumerate(CONLL_LABELS)}
    for i in windows:  # and labelled with its own tag on its first sub-token
        word_index, labels = data.examples.word_index.row(i), data.examples.labels.row(i)
        assert [int(labels[k]) for k in range(len(word_index)) if word_index[k] >= 0] == [
            label2id[data.gold[sentence][w]] for w in word_index if w >= 0]

    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.0, 42)
    results = evaluate_splits(model, tmp_path / "prepared", 0, 8, torch.device("cpu"))["test"]
    assert len(results["pred"][sentence]) == n
    gold = results["data"].gold
    assert results["scores"]["token"]["per_tag"]["B-LOC"]["support"] == sum(g.count("B-LOC") for g in gold)
