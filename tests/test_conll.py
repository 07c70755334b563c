"""nerpipe.data.conll on the hand-written fixtures and on small broken files written per test."""

from collections import Counter

import pytest

from nerpipe.core.errors import UserError
from nerpipe.data.conll import (
    Sentence,
    format_predictions,
    iob1_to_iob2,
    label_list,
    parse_prediction_documents,
    parse_predictions,
    read_conll,
    read_predictions,
    to_iob2,
)

TRAIN_FIRST_LINES = [3, 11, 23, 34, 44, 84, 93, 99, 111, 119]


def test_read_train_fixture(fixture_dir):
    sentences = read_conll(fixture_dir / "train.txt")
    assert len(sentences) == 10  # the two -DOCSTART- lines are not sentences
    assert [s.doc_id for s in sentences] == [0] * 5 + [1] * 5
    assert [s.line for s in sentences] == TRAIN_FIRST_LINES
    assert sentences[0] == Sentence(
        words=["Peter", "Blackburn", "visited", "Washington", "on", "Monday", "."],
        tags=["I-PER", "I-PER", "O", "I-LOC", "O", "O", "O"], doc_id=0, line=3)
    # IOB1 is kept as read: B-LOC only where a LOC directly follows a LOC.
    assert sentences[3].words[1:3] == ["Paris", "London"]
    assert sentences[3].tags[1:3] == ["I-LOC", "B-LOC"]
    assert len(sentences[4].words) == 37
    assert sentences[-1].words == ["Smith", "joined", "Siemens", "in", "1996", "."]


def test_first_token_line_numbers_point_at_the_words(fixture_dir):
    lines = (fixture_dir / "train.txt").read_text().split("\n")
    for sentence in read_conll(fixture_dir / "train.txt"):
        assert lines[sentence.line - 1].split()[0] == sentence.words[0]


@pytest.mark.parametrize("name, n_sentences, n_tokens", [("valid.txt", 8, 63), ("test.txt", 8, 67)])
def test_trailing_blank_lines_make_no_empty_sentence(fixture_dir, name, n_sentences, n_tokens):
    assert (fixture_dir / name).read_bytes().endswith(b" O\n\n\n")
    sentences = read_conll(fixture_dir / name)
    assert len(sentences) == n_sentences
    assert sum(len(s.words) for s in sentences) == n_tokens
    assert all(s.words and len(s.words) == len(s.tags) for s in sentences)
    assert [s.doc_id for s in sentences] == [0] * 4 + [1] * 4


def test_crlf_and_tabs_read_the_same(fixture_dir, tmp_path):
    text = (fixture_dir / "train.txt").read_text()
    windows_copy = tmp_path / "train.txt"
    windows_copy.write_bytes(text.replace(" ", "\t").replace("\n", "\r\n").encode())
    assert read_conll(windows_copy) == read_conll(fixture_dir / "train.txt")


def test_file_already_in_iob2_is_accepted(tmp_path):
    path = tmp_path / "iob2.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nJohn NNP B-NP B-PER\nSmith NNP I-NP I-PER\n"
                    "met VBD B-VP O\nMaria NNP B-NP B-PER\n\n")
    [sentence] = read_conll(path)
    assert sentence.tags == ["B-PER", "I-PER", "O", "B-PER"]
    assert iob1_to_iob2(sentence.tags) == sentence.tags


def test_two_column_file_is_accepted(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("Berlin I-LOC\nis O\n\nParis I-LOC\n")  # no final blank line either
    assert [(s.words, s.tags, s.line) for s in read_conll(path)] == [
        (["Berlin", "is"], ["I-LOC", "O"], 1), (["Paris"], ["I-LOC"], 4)]


def test_any_entity_types_tab_separated_without_document_markers(fixture_dir):
    sentences = read_conll(fixture_dir / "wnut_like" / "test.tsv")
    assert len(sentences) == 6 and {s.doc_id for s in sentences} == {0}
    assert (sentences[2].words[:3], sentences[2].tags) == (
        ["New", "York", "Rovers"], ["B-group", "I-group", "I-group", "O", "O", "O", "B-creative-work",
                                    "I-creative-work"])
    assert label_list(s.tags for s in sentences) == [
        "O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work", "B-group", "I-group",
        "B-location", "I-location", "B-person", "I-person", "B-product", "I-product"]


@pytest.mark.parametrize("tag", ["B-PER", "I-creative-work", "S-WORK_OF_ART", "E-Product2", "B-x", "I-9"])
def test_entity_type_names(tmp_path, tag):
    path = tmp_path / "types.txt"
    path.write_text(f"word\t{tag}\n")
    assert read_conll(path)[0].tags == [tag]


GOOD = "-DOCSTART- -X- -X- O\n\nPeter NNP B-NP I-PER\n"
TAG_EXPECTED = ("in the last column; expected O, or B-, I-, E- or S- (IOB1, IOB2 or BIOES) and an entity type of "
                "letters, digits, hyphens or underscores (B-PER, I-creative-work)")


@pytest.mark.parametrize("text, line, fragment", [
    (GOOD + "visited VBD I-VP\n", 4, "found 3 column(s) in 'visited VBD I-VP'; expected 4"),
    ("Peter\n", 1, "found 1 column(s) in 'Peter'; expected 2"),
    (GOOD + "Foo NNP I-NP B-FOO,\n", 4, "unknown NER tag 'B-FOO,' " + TAG_EXPECTED),
    (GOOD + "\nFoo NNP I-NP X-PER\n", 5, "unknown NER tag 'X-PER' " + TAG_EXPECTED),
    (GOOD + "Foo NNP I-NP I-\n", 4, "unknown NER tag 'I-'"),
    (GOOD + "Foo NNP I-NP i-per\n", 4, "unknown NER tag 'i-per'"),
    (GOOD + "Foo NNP I-NP B-creative--work\n", 4, "unknown NER tag 'B-creative--work'"),
    (GOOD + "Foo NNP I-NP B-PER-\n", 4, "unknown NER tag 'B-PER-'"),
    (GOOD + "Foo NNP I-NP U-PER\n", 4, "unknown NER tag 'U-PER'"),  # BILOU is not read
    (GOOD + "Foo NNP I-NP o\n", 4, "unknown NER tag 'o'"),
])
def test_bad_line_names_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert fragment in str(err.value)


def test_bad_line_names_the_original_the_copy_came_from(tmp_path):
    path = tmp_path / "valid.txt"
    path.write_text(GOOD + "visited VBD I-VP\n")
    with pytest.raises(UserError) as err:
        read_conll(path, origin="/path/to/conll2003/eng.testa")
    assert str(err.value) == (f"{path}:4 (copied from /path/to/conll2003/eng.testa:4): found 3 column(s) in "
                              "'visited VBD I-VP'; expected 4 like the file's first token line (word ... NER-tag)")
    path.write_text("The DT B-NP O\n")
    with pytest.raises(UserError) as err:
        read_conll(path, origin="/path/to/conll2003/eng.testa")
    assert str(err.value) == (f"{path} (copied from /path/to/conll2003/eng.testa): 1 sentences but not one entity "
                              "tag; is this the right file?")


def test_non_utf8_byte_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(GOOD.encode() + "Caf\u00e9 NNP I-NP I-LOC\n".encode("latin-1"))
    with pytest.raises(UserError) as err:
        read_conll(path)
    assert str(err.value) == (f"{path}:4: byte 0xe9 at column 4 is not valid UTF-8; "
                              "re-encode the file as UTF-8")


@pytest.mark.parametrize("text, fragment", [
    ("", "no sentences found"),
    ("-DOCSTART- -X- -X- O\n\n\n", "no sentences found"),
    ("The DT B-NP O\ncat NN I-NP O\n\nsat VBD B-VP O\n", "2 sentences but not one entity tag"),
])
def test_unusable_file_names_the_file(tmp_path, text, fragment):
    path = tmp_path / "split.txt"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}: ")
    assert fragment in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found") as err:
        read_conll(tmp_path / "nope.txt")
    assert str(tmp_path / "nope.txt") in str(err.value)


@pytest.mark.parametrize("iob1, iob2", [
    ([], []),
    (["O", "O"], ["O", "O"]),
    (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
    (["I-LOC", "B-LOC", "I-LOC"], ["B-LOC", "B-LOC", "I-LOC"]),  # two adjacent LOC entities
    (["I-ORG", "I-LOC", "I-LOC"], ["B-ORG", "B-LOC", "I-LOC"]),  # a type change starts an entity
    (["O", "B-MISC", "I-MISC"], ["O", "B-MISC", "I-MISC"]),  # the train.txt quirk: B- after O
])
def test_iob1_to_iob2(iob1, iob2):
    assert iob1_to_iob2(iob1) == iob2
    assert iob1_to_iob2(iob2) == iob2  # idempotent
    assert to_iob2(iob1) == to_iob2(iob2) == iob2  # what prepare calls, whichever of the two a file is in


@pytest.mark.parametrize("bioes, iob2", [
    (["S-PER", "O", "B-LOC", "E-LOC"], ["B-PER", "O", "B-LOC", "I-LOC"]),
    (["B-ORG", "I-ORG", "E-ORG", "S-ORG"], ["B-ORG", "I-ORG", "I-ORG", "B-ORG"]),  # two adjacent ORG entities
    (["S-person", "S-person", "B-creative-work", "E-creative-work"],
     ["B-person", "B-person", "B-creative-work", "I-creative-work"]),
    (["B-LOC", "E-LOC", "B-LOC", "E-LOC"], ["B-LOC", "I-LOC", "B-LOC", "I-LOC"]),
    (["O", "O"], ["O", "O"]),
])
def test_bioes_to_iob2(bioes, iob2):
    assert to_iob2(bioes) == iob2
    assert to_iob2(iob2) == iob2


def test_bioes_file_prepares_like_its_iob1_original(fixture_dir, tmp_path):
    """The train fixture rewritten in BIOES converts to exactly the IOB2 of its IOB1 original."""
    sentences = read_conll(fixture_dir / "train.txt")
    lines = []
    for s in sentences:
        tags = iob1_to_iob2(s.tags)
        for i, (word, tag) in enumerate(zip(s.words, tags)):
            last = i + 1 == len(tags) or tags[i + 1] != "I-" + tag[2:]
            if tag != "O":
                tag = {("B", True): "S", ("B", False): "B", ("I", True): "E", ("I", False): "I"}[tag[0], last] + tag[1:]
            lines.append(f"{word}\t{tag}")
        lines.append("")
    path = tmp_path / "train.bioes"
    path.write_text("\n".join(lines))
    bioes = read_conll(path)
    assert bioes[0].tags == ["B-PER", "E-PER", "O", "S-LOC", "O", "O", "O"]
    assert [to_iob2(s.tags) for s in bioes] == [iob1_to_iob2(s.tags) for s in sentences]


def test_entity_counts_of_train_fixture(fixture_dir):
    tags = [t for s in read_conll(fixture_dir / "train.txt") for t in iob1_to_iob2(s.tags)]
    starts = Counter(t[2:] for t in tags if t.startswith("B-"))
    assert starts == {"PER": 5, "LOC": 9, "ORG": 8, "MISC": 3}


def test_label_list(fixture_dir):
    tags = [iob1_to_iob2(s.tags) for s in read_conll(fixture_dir / "train.txt")]
    assert label_list(tags) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    # B- is listed for every type even when only I- was seen; O alone gives O alone.
    assert label_list([["I-PER", "O"]]) == ["O", "B-PER", "I-PER"]
    assert label_list([["O"]]) == ["O"]


def test_format_and_read_predictions(tmp_path):
    words, gold, pred = [["Peter", "ran"], ["Paris"]], [["B-PER", "O"], ["B-LOC"]], [["B-PER", "O"], ["B-ORG"]]
    text = format_predictions(words, gold, pred)
    assert text == "Peter B-PER B-PER\nran O O\n\nParis B-LOC B-ORG\n\n"
    path = tmp_path / "predictions.txt"
    path.write_text(text)
    assert read_predictions(path) == (words, gold, pred)
    assert parse_prediction_documents(text) == (words, gold, pred, None)  # no markers: no documents


def test_prediction_files_keep_the_documents_of_the_corpus():
    words, gold, pred = [["Peter"], ["ran"], ["Paris"]], [["B-PER"], ["O"], ["B-LOC"]], [["B-PER"], ["O"], ["O"]]
    text = format_predictions(words, gold, pred, doc_ids=[3, 3, 4])
    assert text == "-DOCSTART- O O\n\nPeter B-PER B-PER\n\nran O O\n\n-DOCSTART- O O\n\nParis B-LOC O\n\n"
    assert parse_prediction_documents(text) == (words, gold, pred, [0, 0, 1])
    assert parse_predictions(text) == (words, gold, pred)  # what conlleval and the error analysis read
    # One document (or a corpus without markers, all doc 0): nothing to resample by, no marker written.
    assert format_predictions(words, gold, pred, doc_ids=[0, 0, 0]) == format_predictions(words, gold, pred)


def test_a_type_only_in_dev_or_test_is_named_with_file_and_first_line(fixture_dir, tmp_path, capsys):
    from nerpipe.data.prepare import read_corpus

    files = {split: fixture_dir / f"{split}.txt" for split in ("train", "valid", "test")}
    read_corpus(files)
    assert capsys.readouterr().err == ""  # every type of the fixtures' dev and test is in train
    lines = (fixture_dir / "valid.txt").read_text().split("\n")
    token_lines = [i for i, line in enumerate(lines) if line.split() and line.split()[0] != "-DOCSTART-"]
    first, second = token_lines[3], token_lines[-1]  # the typo twice: only the first one is named
    for i in (first, second):
        lines[i] = " ".join(lines[i].split()[:-1] + ["B-FOO"])
    files["valid"] = tmp_path / "valid.txt"
    files["valid"].write_text("\n".join(lines))
    sentences, labels = read_corpus(files, sources={"valid": {"file": "/data/eng.testa"}})
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert (f"warning: entity type 'FOO' occurs in valid ({files['valid']}:{first + 1} (copied from "
            f"/data/eng.testa:{first + 1})) but not in the training data: the model cannot predict it") in err
    assert "B-FOO" in labels  # still a label: the dev gold has it, and scoring must see the miss
    read_corpus({**files, "valid": fixture_dir / "valid.txt"}, max_train_sentences=1)
    assert "not in the training data (the first 1 sentences prepare.max_train_sentences keeps)" in capsys.readouterr().err
