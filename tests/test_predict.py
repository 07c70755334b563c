"""`nerpipe predict` on raw text: word splitting, entity offsets, windowing, output formats, model sources,
and agreement with transformers.pipeline("token-classification") on the same saved model.

Most tests use a *keyword model*: the tiny BERT rewired so that each token's label depends on the
token alone (attention and feed-forward outputs zeroed, position embeddings zeroed, one embedding
direction per label). Its entities are known in advance, so the tests can assert exact spans.
"""

import argparse
import io
import json
import sys

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from nerpipe.cli import main
from nerpipe.core.errors import UserError
from nerpipe.data.conll import read_conll
from nerpipe.model.description import write_description
from nerpipe.predict.command import add_arguments, model_settings
from nerpipe.predict.words import split_words
from tests.tiny_model import build_tiny_model

# Token -> the label the keyword model gives it; every other token (and [CLS], [SEP]) gets O.
KEYWORDS = {
    "John": "B-PER", "Peter": "B-PER", "Maria": "B-PER", "Smith": "I-PER",
    "Paris": "B-LOC", "London": "B-LOC", "Berlin": "B-LOC", "New": "B-LOC", "York": "I-LOC",
    "Wash": "B-LOC", "##ing": "I-LOC", "##ton": "I-LOC",  # Washington: consistent pieces
    "Sie": "B-ORG",  # Siemens = Sie ##mens, and ##mens stays O: only the first piece says ORG
    "Reuters": "B-ORG", "German": "B-MISC", "English": "B-MISC",
    "[UNK]": "I-LOC",  # every unknown word (Zürich, U.S., each of 東 京) is LOC; a run of them is one entity
}


def build_keyword_model(tiny_model_dir, out):
    """Save a copy of the tiny model whose label for a token depends on that token alone (KEYWORDS)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir)
    label2id = model.config.label2id
    hidden = model.config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.fill_(1.0)
            elif ("LayerNorm.bias" in name or "position_embeddings" in name or "token_type_embeddings" in name
                  or "attention.output.dense" in name or "layer." in name and ".output.dense" in name):
                p.zero_()  # each layer becomes LayerNorm(x): a token's output depends on that token only
        emb = model.bert.embeddings.word_embeddings.weight
        emb.zero_()
        for token_id in range(emb.shape[0]):
            label = KEYWORDS.get(tokenizer.convert_ids_to_tokens(token_id), "O")
            emb[token_id, label2id[label]] = 1.0
            emb[token_id, hidden - 1] = 0.3 * (token_id % 4)  # varies the scores from token to token
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        for label_id in range(len(label2id)):
            model.classifier.weight[label_id, label_id] = 0.5  # (labels, hidden): reads the label's direction
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    describe(out, model.config)
    return out


def describe(out, config, **settings):
    """The nerpipe_model.json the train stage writes, with params.yaml's default windows unless `settings` say."""
    write_description(out, labels=[config.id2label[i] for i in range(len(config.id2label))],
                      **{"max_length": 128, "window_overlap": 32, "context": 0, "bf16": "auto", **settings},
                      method={"method": "full", "merged": True}, data_sha256=None)


@pytest.fixture(scope="session")
def keyword_model_dir(tiny_model_dir, tmp_path_factory):
    return build_keyword_model(tiny_model_dir, tmp_path_factory.mktemp("keyword-bert"))


def predict_jsonl(capsys, *args):
    assert main(["predict", "--format", "jsonl", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def spans(record):
    return [(e["text"], e["type"], e["start"], e["end"]) for e in record["entities"]]


@pytest.fixture(autouse=True)
def outside_the_repo(tmp_path, monkeypatch):
    """No params.yaml in the working directory: the window settings are the defaults unless a test says."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("text, words", [
    ("The U.S. team met Maria's friends in Zürich.",
     ["The", "U.S.", "team", "met", "Maria", "'s", "friends", "in", "Zürich", "."]),
    ("I don't know, they're O'Neill's (Jean-Pierre) 1,000 3.5% e.g.",
     ["I", "do", "n't", "know", ",", "they", "'re", "O'Neill", "'s", "(", "Jean-Pierre", ")", "1,000", "3.5",
      "%", "e.g."]),
    ("DON’T won't players' 'stop' U.S.A", ["DO", "N’T", "wo", "n't", "players", "'", "'", "stop", "'", "U.S.A"]),
    ("東京に行く e\u0301te\u0301 हिन्दी",  # été with combining accents; Hindi vowel signs are marks too
     ["東", "京", "に", "行", "く", "e\u0301te\u0301", "हिन्दी"]),
    ("  a\tb\u200bc $5 5€ 😀 www.reuters.com end.", ["a", "b", "\u200b", "c", "$", "5", "5", "€", "😀",
                                                      "www.reuters.com", "end", "."]),
    ("", []),
])
def test_split_words_keeps_offsets(text, words):
    found = split_words(text)
    assert [text[start:end] for start, end in found] == words
    # Words never overlap and cover every non-space character exactly once.
    assert all(a[1] <= b[0] for a, b in zip(found, found[1:]))
    assert "".join(words) == "".join(text.split())


def test_entities_map_back_to_exact_substrings(keyword_model_dir, capsys):
    texts = ["John Smith flew to Paris.",
             'Reuters: "Maria met the U.S. team in Zürich, 東京 and New York."',
             "  Peter\tvisited Washington and Siemens  ",
             "the team lost"]
    records = predict_jsonl(capsys, "--model", str(keyword_model_dir), *texts)
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r["text"] for r in records] == texts
    assert spans(records[0]) == [("John Smith", "PER", 0, 10), ("Paris", "LOC", 19, 24)]
    assert spans(records[1]) == [("Reuters", "ORG", 0, 7), ("Maria", "PER", 10, 15), ("U.S.", "LOC", 24, 28),
                                 ("Zürich", "LOC", 37, 43), ("東京", "LOC", 45, 47), ("New York", "LOC", 52, 60)]
    assert spans(records[2]) == [("Peter", "PER", 2, 7), ("Washington", "LOC", 16, 26), ("Siemens", "ORG", 31, 38)]
    assert spans(records[3]) == []
    for text, record in zip(texts, records):
        for e in record["entities"]:
            assert text[e["start"]:e["end"]] == e["text"]
            assert 0 < e["score"] <= 1


def test_entity_score_is_the_mean_of_its_word_scores(keyword_model_dir, capsys):
    one, two, both = (predict_jsonl(capsys, "--model", str(keyword_model_dir), text)[0]["entities"]
                      for text in ("John", "Smith", "John Smith"))
    assert one[0]["score"] != two[0]["score"]  # the keyword model scores John and Smith differently
    assert both[0]["score"] == pytest.approx((one[0]["score"] + two[0]["score"]) / 2, abs=1e-4)


def test_line_longer_than_the_model_is_windowed(keyword_model_dir, capsys):
    unit = "John Smith flew to Paris . "  # 6 words, 6 sub-tokens, 27 characters
    text = unit * 100  # 600 sub-tokens: more than the model's 512 positions, so only windows can run it
    [record] = predict_jsonl(capsys, "--model", str(keyword_model_dir), "--max-length", "32",
                             "--window-overlap", "8", text)
    expected = []
    for k in range(100):
        expected += [("John Smith", "PER", 27 * k, 27 * k + 10), ("Paris", "LOC", 27 * k + 19, 27 * k + 24)]
    assert spans(record) == expected


def test_max_length_beyond_the_model_positions_is_refused(keyword_model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(keyword_model_dir), "--max-length", "600", "John"])
    assert exit_info.value.code == 2
    assert "max_length 600 exceeds the model's 512 positions" in capsys.readouterr().err


def test_settings_come_from_the_model_and_flags_never_from_params_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare:\n  max_length: 64\n  context: 8\n")  # the current directory's
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    described = {"max_length": 24, "window_overlap": 4, "context": 16, "bf16": "off", "labels": ["O"]}
    assert model_settings(parser.parse_args(["x"]), described, "m") == {
        "max_length": 24, "window_overlap": 4, "context": 16, "bf16": "off"}
    flags = parser.parse_args(["--max-length", "40", "--window-overlap", "0", "--context", "0", "--bf16", "on", "x"])
    assert model_settings(flags, described, "m") == {"max_length": 40, "window_overlap": 0, "context": 0, "bf16": "on"}
    with pytest.raises(UserError, match=r"--window-overlap: must be in \[0, max_length/2\], got 30"):
        model_settings(parser.parse_args(["--max-length", "40", "--window-overlap", "30", "x"]), described, "m")
    with pytest.raises(UserError, match="--context: must be >= 0"):
        model_settings(parser.parse_args(["--context", "-1", "x"]), described, "m")


def test_a_model_without_a_description_needs_the_flags(keyword_model_dir, tmp_path, capsys):
    import shutil

    plain = shutil.copytree(keyword_model_dir, tmp_path / "plain")
    (plain / "nerpipe_model.json").unlink()
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(plain), "--context", "0", "John"])
    assert (f"model '{plain}': no nerpipe_model.json, so its window, context and precision settings are unknown. "
            "Re-run the train stage (`dvc repro -f train`) to write it, or give --max-length --window-overlap "
            "--bf16") in capsys.readouterr().err
    flags = ["--max-length", "128", "--window-overlap", "32", "--context", "0", "--bf16", "auto"]
    expected = predict_jsonl(capsys, "--model", str(keyword_model_dir), *PIPELINE_TEXTS)
    assert predict_jsonl(capsys, "--model", str(plain), *flags, *PIPELINE_TEXTS) == expected
    (plain / "nerpipe_method.json").write_text('{"method": "full", "merged": true}\n')  # an older nerpipe's model
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(plain), *flags, "John"])
    assert (f"{plain}: written by an older nerpipe (nerpipe_method.json, no nerpipe_model.json), so its window, "
            "context and precision settings are unknown; re-run the train stage") in capsys.readouterr().err


def test_stdin_lines_keep_their_own_offsets(keyword_model_dir, capsys, monkeypatch):
    raw = "John Smith flew to Paris.\r\n\r\nGerman officials met Maria.\r\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    records = predict_jsonl(capsys, "--model", str(keyword_model_dir))
    assert [r["text"] for r in records] == ["John Smith flew to Paris.", "", "German officials met Maria."]
    assert [spans(r) for r in records] == [[("John Smith", "PER", 0, 10), ("Paris", "LOC", 19, 24)], [],
                                           [("German", "MISC", 0, 6), ("Maria", "PER", 21, 26)]]


def test_table_and_conll_formats(keyword_model_dir, capsys, tmp_path):
    model = ["--model", str(keyword_model_dir)]
    [record] = predict_jsonl(capsys, *model, "John Smith flew to Paris.")
    per, loc = record["entities"]
    main(["predict", *model, "--format", "table", "John Smith flew to Paris."])
    assert capsys.readouterr().out.splitlines() == [
        "  line  start    end  type   score  text",
        f"     1      0     10  PER   {per['score']:.4f}  John Smith",
        f"     1     19     24  LOC   {loc['score']:.4f}  Paris"]
    main(["predict", *model, "--format", "conll", "John Smith flew to Paris.", "", "Maria met"])
    conll = tmp_path / "pred.conll"
    conll.write_text(capsys.readouterr().out)
    sentences = read_conll(conll)  # the format the pipeline itself reads
    assert [s.words for s in sentences] == [["John", "Smith", "flew", "to", "Paris", "."], ["Maria", "met"]]
    assert [s.tags for s in sentences] == [["B-PER", "I-PER", "O", "O", "B-LOC", "O"], ["B-PER", "O"]]


def test_input_file_errors_name_file_and_line(keyword_model_dir, capsys, tmp_path):
    bad = tmp_path / "in.txt"
    bad.write_bytes(b"John Smith\nParis \xff\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(keyword_model_dir), "--input", str(bad)])
    assert exit_info.value.code == 2
    assert f"{bad}:2: byte 0xff is not valid UTF-8" in capsys.readouterr().err


def test_model_without_iob2_labels_is_refused(tmp_path, capsys):
    untrained = build_tiny_model(tmp_path / "no-labels")  # LABEL_0, LABEL_1: not a model the pipeline trained
    describe(untrained, AutoModelForTokenClassification.from_pretrained(untrained).config)
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(untrained), "John"])
    assert "are not IOB2 tags" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(tmp_path / "missing"), "John"])
    assert "no such directory" in capsys.readouterr().err


PIPELINE_TEXTS = [
    "John Smith flew to Paris.",
    "Reuters said Peter Smith visited Washington and New York.",
    "German officials met Maria in Berlin, London and Zürich.",
    "Peter flew to 東京 on Friday.",
    "Siemens expects sales to rise in Munich.",
]


def pipeline_entities(model_dir, strategy):
    from transformers import pipeline

    tagger = pipeline("token-classification", model=str(model_dir), aggregation_strategy=strategy, device="cpu")
    return [[(text[e["start"]:e["end"]], e["entity_group"], e["start"], e["end"], float(e["score"]))
             for e in tagger(text)] for text in PIPELINE_TEXTS]


def test_transformers_pipeline_first_gives_the_same_entities(keyword_model_dir, capsys):
    """pipeline(..., aggregation_strategy="first") labels a word by its first sub-token's argmax and
    scores a group by the mean of its words' scores: exactly what nerpipe predict does. It agrees
    wherever both split the text into the same words: the pipeline splits at whitespace, at every
    punctuation character and around each CJK ideograph, nerpipe at the CoNLL rule of
    nerpipe/predict/words.py, so U.S., don't or Jean-Pierre are several words there and one here. These
    texts avoid such words; Washington (3 pieces) and Siemens (2 pieces, the second labelled O) are
    multi-piece words, where "first" and nerpipe both read the first piece only."""
    # fp32 like the pipeline: bf16 autocast (train.bf16: auto, on here where the CPU has avx512_bf16)
    # moves scores by ~1e-3
    records = predict_jsonl(capsys, "--model", str(keyword_model_dir), "--bf16", "off", *PIPELINE_TEXTS)
    ours = [[(e["text"], e["type"], e["start"], e["end"]) for e in r["entities"]] for r in records]
    theirs = pipeline_entities(keyword_model_dir, "first")
    assert [[e[:4] for e in line] for line in theirs] == ours
    assert ours[1] == [("Reuters", "ORG", 0, 7), ("Peter Smith", "PER", 13, 24), ("Washington", "LOC", 33, 43),
                       ("New York", "LOC", 48, 56)]
    assert ours[4] == [("Siemens", "ORG", 0, 7)]
    for our_line, their_line in zip(records, theirs):
        assert [e["score"] for e in our_line["entities"]] == pytest.approx([e[4] for e in their_line], abs=1e-4)


def test_transformers_pipeline_simple_differs_only_where_pieces_disagree(keyword_model_dir, capsys):
    """pipeline(..., aggregation_strategy="simple") labels every sub-token on its own and groups
    them, so it agrees with nerpipe only where a word's later pieces carry the I- tag of its first
    (Wash ##ing ##ton = B-LOC I-LOC I-LOC). Sie ##mens = B-ORG O gives "Sie" there, "Siemens" here."""
    records = predict_jsonl(capsys, "--model", str(keyword_model_dir), *PIPELINE_TEXTS)
    ours = [[(e["text"], e["type"], e["start"], e["end"]) for e in r["entities"]] for r in records]
    theirs = [[e[:4] for e in line] for line in pipeline_entities(keyword_model_dir, "simple")]
    assert theirs[:4] == ours[:4]
    assert (theirs[4], ours[4]) == ([("Sie", "ORG", 0, 3)], [("Siemens", "ORG", 0, 7)])


def test_mlflow_model_uri(keyword_model_dir, capsys, tmp_path, monkeypatch):
    """A model logged with mlflow.transformers.log_model predicts from runs:/ and models:/ URIs
    exactly as its directory does."""
    import mlflow
    import mlflow.transformers

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # what `nerpipe predict` looks runs:/ and models:/ up in
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # log_model would ask the hub for a model card
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", store)  # restored afterwards
    components = {"model": AutoModelForTokenClassification.from_pretrained(keyword_model_dir),
                  "tokenizer": AutoTokenizer.from_pretrained(keyword_model_dir)}
    with mlflow.start_run() as run:
        # Explicit requirements: inferring them imports the pipeline's optional torchvision, absent here.
        mlflow.transformers.log_model(components, name="model", task="token-classification",
                                      pip_requirements=["transformers", "torch"], registered_model_name="tiny-ner")
    texts = PIPELINE_TEXTS[:3]
    expected = predict_jsonl(capsys, "--model", str(keyword_model_dir), *texts)
    assert expected[0]["entities"]  # a comparison of empty lists would prove nothing
    # The transformers flavor holds no nerpipe_model.json: the flags say how the model was trained.
    flags = ["--max-length", "128", "--window-overlap", "32", "--context", "0", "--bf16", "auto"]
    for uri in (f"runs:/{run.info.run_id}/model", "models:/tiny-ner/1"):
        assert predict_jsonl(capsys, "--model", uri, *flags, *texts) == expected
    with pytest.raises(SystemExit):
        main(["predict", "--model", "runs:/0123456789abcdef/model", "John"])
    assert "MLflow could not download it" in capsys.readouterr().err


def test_bf16_flag_overrides_the_param_and_keeps_the_entities(keyword_model_dir, capsys):
    args = ("--model", str(keyword_model_dir), *PIPELINE_TEXTS)
    fp32, bf16 = predict_jsonl(capsys, "--bf16", "off", *args), predict_jsonl(capsys, "--bf16", "on", *args)
    assert [spans(r) for r in bf16] == [spans(r) for r in fp32]
    fp32_scores = [e["score"] for r in fp32 for e in r["entities"]]
    bf16_scores = [e["score"] for r in bf16 for e in r["entities"]]
    assert bf16_scores != fp32_scores  # autocast did run
    assert bf16_scores == pytest.approx(fp32_scores, abs=2e-2)
