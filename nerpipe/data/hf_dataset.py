"""Hugging Face datasets as a corpus source, written to <out> as the CoNLL text the file sources copy.

    data.source: hf://datasets/<owner>/<name>@<commit sha>   huggingface_hub.snapshot_download, then datasets
                 a directory holding dataset_dict.json          datasets.load_from_disk (save_to_disk's output)
                 a directory holding *.parquet files            datasets.load_dataset (splits from the file names)

Writes the same contract as nerpipe/data/fetch.py, so prepare and what follows are unchanged:

    <out>/<split>.txt     one `word tag` line per token, a blank line after each sentence, `-DOCSTART- O` and a
                          blank line where a document starts (data.dataset.documents)
    <out>/sources.json    {split: {"repository", "revision" (Hub) or "directory", "split": the dataset's split,
                          "files": {each file read: its sha256}, "sha256": of <out>/<split>.txt}}

Tags are the ClassLabel names of the tags column, its strings, or data.dataset.tag_names for bare integers;
prepare converts IOB1 and BIOES to IOB2 as for any CoNLL file. So a dataset with the words and tags of a
CoNLL corpus gives the same prepared data as its files.
"""

import tempfile
from pathlib import Path

from nerpipe.core.atomic import atomic_path, write_json
from nerpipe.core.errors import UserError
from nerpipe.core.params import SPLITS
from nerpipe.data.conll import TAG_EXPECTED, TAG_PATTERN, Sentence, check_split_usable
from nerpipe.data.fetch import SOURCES_FILE, check_sha256, sha256_of

DOCUMENT_START = "-DOCSTART- O"
OFFLINE_HINT = ("without network access, save the dataset where there is (`datasets.load_dataset(...)"
                ".save_to_disk(dir)`, docs/corpora.md) and set data.source to that directory")


def is_dataset_source(source):
    """True for an hf:// source and for a directory that holds a save_to_disk DatasetDict or parquet files."""
    if source.startswith("hf://"):
        return True
    directory = Path(source)
    return directory.is_dir() and (_is_saved_dataset(directory) or any(_parquet_files(directory)))


def _is_saved_dataset(directory):
    return (directory / "dataset_dict.json").is_file() or (directory / "state.json").is_file()


def _parquet_files(directory):
    return (p for p in sorted(directory.rglob("*.parquet")) if not any(part.startswith(".") for part in
                                                                        p.relative_to(directory).parts))


def fetch_dataset(data, out_dir):
    """Write every split of the dataset data.source names to <out_dir>/<split>.txt, check data.sha256 against
    them and write sources.json; returns its content. All or nothing, as fetch.fetch_corpus."""
    cfg = data.dataset
    with tempfile.TemporaryDirectory(prefix="nerpipe-dataset-") as work:
        splits, record, root, files_of = _load(data, Path(work))
        by_split = _pick_splits(splits, cfg, data.source)
        where = {split: f"{data.source} split {cfg.splits[split]!r}" for split in SPLITS}
        names = {split: _tag_names(by_split[split], cfg, where[split]) for split in SPLITS}
        with atomic_path(out_dir, is_dir=True) as tmp:
            sources = {}
            for split in SPLITS:
                text = conll_text(by_split[split], cfg, names[split], where[split])
                (tmp / f"{split}.txt").write_text(text, encoding="utf-8")
                files = {f.resolve().relative_to(root.resolve()).as_posix(): sha256_of(f)
                         for f in files_of(cfg.splits[split])}
                sources[split] = {**record, "split": cfg.splits[split], "files": files,
                                  "sha256": sha256_of(tmp / f"{split}.txt")}
            check_sha256(data, {s: sources[s]["sha256"] for s in SPLITS}, where, out_dir)
            write_json(tmp / SOURCES_FILE, sources)
    return sources


def _load(data, work):
    """(DatasetDict, the record of where it came from, the directory its files are under, split name -> the
    files it was read from)."""
    import datasets

    hub = data.hub_dataset()
    if hub:
        repo, revision = hub
        commit, directory = _snapshot(repo, revision, work / "snapshot")
        record = {"repository": repo, "revision": commit}
    else:
        directory = Path(data.source)
        record = {"directory": str(directory)}
    if _is_saved_dataset(directory):
        if data.dataset.config:
            raise UserError(f"data.source {data.source}: a save_to_disk directory has no configurations; set "
                            "data.dataset.config to \"\"")
        if not (directory / "dataset_dict.json").is_file():
            raise UserError(f"data.source {data.source}: a save_to_disk directory of one Dataset, without splits; "
                            "save a DatasetDict (`datasets.DatasetDict({'train': ..., 'validation': ..., 'test': "
                            "...}).save_to_disk(dir)`) and point data.source at it")
        splits = datasets.load_from_disk(str(directory))
        return splits, record, directory, lambda name: sorted(p for p in (directory / name).rglob("*") if p.is_file())
    try:
        builder = datasets.load_dataset_builder(str(directory), name=data.dataset.config or None,
                                                cache_dir=str(work / "cache"))
    except ValueError as err:  # what datasets says of a configuration missing or unknown
        raise UserError(f"data.source {data.source}: {err} (data.dataset.config names the configuration)") from None
    except RuntimeError as err:  # a loading script, which datasets no longer runs
        raise UserError(f"data.source {data.source}: {err}; use a copy of the dataset as data files (parquet, or "
                        "save_to_disk where the script still runs)") from None
    builder.download_and_prepare()
    splits = builder.as_dataset()
    data_files = builder.config.data_files or {}
    return splits, record, directory, lambda name: sorted(Path(f) for f in data_files.get(name, []))


def _snapshot(repo, revision, work):
    """Download the dataset repository `repo` at `revision` into `work`; returns (the commit sha the revision
    resolved to, `work`)."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    api = huggingface_hub.HfApi()
    try:
        commit = api.dataset_info(repo, revision=revision).sha
        huggingface_hub.snapshot_download(repo, repo_type="dataset", revision=commit, local_dir=work)
    except RevisionNotFoundError:
        raise UserError(f"data.source hf://datasets/{repo}@{revision}: no revision {revision!r} in the dataset "
                        f"repository {repo}; pick a commit from https://huggingface.co/datasets/{repo}/commits/main"
                        ) from None
    except RepositoryNotFoundError:
        raise UserError(f"data.source hf://datasets/{repo}@{revision}: no dataset repository {repo!r} on "
                        f"{huggingface_hub.constants.ENDPOINT} (or it is private: `hf auth login`)") from None
    except (huggingface_hub.errors.HfHubHTTPError, httpx2.HTTPError, OSError) as err:
        raise UserError(f"data.source hf://datasets/{repo}@{revision}: cannot download it ({err}); "
                        f"{OFFLINE_HINT}") from None
    return commit, work


def _pick_splits(splits, cfg, source):
    """{train/valid/test: the dataset's split data.dataset.splits names}, every missing split and column named."""
    problems = []
    for split in SPLITS:
        name = cfg.splits[split]
        if name not in splits:
            problems.append(f"no split {name!r} (data.dataset.splits.{split}); its splits: {', '.join(splits)}")
            continue
        columns = splits[name].column_names
        for key in ("words", "tags", "documents"):
            column = getattr(cfg, key)
            if column and column not in columns:
                problems.append(f"split {name!r} has no column {column!r} (data.dataset.{key}); its columns: "
                                f"{', '.join(columns)}")
    if problems:
        raise UserError(f"data.source {source}: {len(problems)} problem(s), nothing was written:\n  "
                        + "\n  ".join(problems))
    return {split: splits[cfg.splits[split]] for split in SPLITS}


def _tag_names(ds, cfg, where):
    """The tag of each id where the tags column holds integers (ClassLabel names or data.dataset.tag_names);
    None where it holds strings. Anything else is refused, saying what to set."""
    from datasets import ClassLabel, Value

    feature = getattr(ds.features[cfg.tags], "feature", None)  # a List (Sequence) of what?
    dtype = getattr(feature, "dtype", None)
    if isinstance(feature, ClassLabel):
        names = feature.names
        if cfg.tag_names:
            raise UserError(f"{where}: column {cfg.tags!r} is a ClassLabel with names {names}; leave "
                            "data.dataset.tag_names empty ([]), the names are the tags")
    elif isinstance(feature, Value) and dtype in ("string", "large_string"):
        if cfg.tag_names:
            raise UserError(f"{where}: column {cfg.tags!r} holds tag strings; leave data.dataset.tag_names empty ([])")
        return None
    elif isinstance(feature, Value) and dtype.startswith(("int", "uint")):
        if not cfg.tag_names:
            raise UserError(f"{where}: column {cfg.tags!r} holds integer tags without names (no ClassLabel feature); "
                            "set data.dataset.tag_names to the tag of each id in order, e.g. [O, B-PER, I-PER, ...]")
        names = cfg.tag_names
    else:
        raise UserError(f"{where}: column {cfg.tags!r} is {ds.features[cfg.tags]}; expected a list of tags per "
                        "sentence, as ClassLabel ids or strings (data.dataset.tags names the column)")
    bad = [n for n in names if not TAG_PATTERN.match(n)]
    if bad:
        source = "data.dataset.tag_names" if cfg.tag_names else f"the ClassLabel names of column {cfg.tags!r}"
        raise UserError(f"{where}: {', '.join(map(repr, bad))} in {source} not a tag; {TAG_EXPECTED}")
    return list(names)


def conll_text(ds, cfg, names, where):
    """The split as CoNLL text (`word tag` lines); rows without words are left out, as extra blank lines are
    in a CoNLL file. Raises UserError naming the row of a bad word or tag."""
    columns = [cfg.words, cfg.tags] + ([cfg.documents] if cfg.documents else [])
    lines, document, sentences = [], object(), []
    for row, example in enumerate(ds.select_columns(columns)):
        words, tags = example[cfg.words], example[cfg.tags]
        at = f"{where}, row {row}"
        if not (isinstance(words, list) and isinstance(tags, list)) or len(words) != len(tags):
            raise UserError(f"{at}: words {words!r}, tags {tags!r}; column {cfg.words!r} must hold a list of the "
                            f"sentence's words and {cfg.tags!r} one tag for each")
        if cfg.documents and example[cfg.documents] != document:
            document = example[cfg.documents]
            lines += [DOCUMENT_START, ""]
        if not words:
            continue
        if names is not None:
            if any(not 0 <= t < len(names) for t in tags):
                raise UserError(f"{at}: tag ids {tags} outside the {len(names)} names of column {cfg.tags!r}")
            tags = [names[t] for t in tags]
        for word, tag in zip(words, tags):
            if not isinstance(word, str) or word.split() != [word]:
                raise UserError(f"{at}: word {word!r} is empty or holds white space; a CoNLL line cannot carry it")
            if not (isinstance(tag, str) and TAG_PATTERN.match(tag)):
                raise UserError(f"{at}: unknown NER tag {tag!r} in column {cfg.tags!r}; {TAG_EXPECTED}")
        lines += [f"{word} {tag}" for word, tag in zip(words, tags)] + [""]
        sentences.append(Sentence(words, tags))
    check_split_usable(sentences, where)
    return "\n".join(lines) + "\n"
