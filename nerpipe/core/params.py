"""Typed, validated params: one dataclass per params.yaml section, every problem reported at once.

params.yaml is read with YAML 1.2 rules (ruamel.yaml), so `lr: 3e-05` -- what
`dvc exp run -S lr=3e-5` writes -- is the float 3e-05, not the string PyYAML's safe_load returns.
"""

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from nerpipe.core.errors import UserError
from nerpipe.core.methods import METHODS

SPLITS = ("train", "valid", "test")
MIN_RESAMPLES = 100  # bootstrap resamples: with fewer, a 95% interval's ends rest on two or three of them


@dataclass(frozen=True)
class Allowed:
    """The values a field takes, declared beside it: `text` for messages and docs/reference/params.md,
    `ok(value, section)` for validation (the section, for a bound that depends on another field)."""
    text: str
    ok: Callable
    why: str = ""


def at_least(lo, why=""):
    return Allowed(f">= {lo}", lambda v, _: v >= lo, why)


def above(lo):
    return Allowed(f"> {lo}", lambda v, _: v > lo)


def between(lo, hi, upper_open=False):
    if upper_open:
        return Allowed(f"in [{lo}, {hi})", lambda v, _: lo <= v < hi)
    return Allowed(f"in [{lo}, {hi}]", lambda v, _: lo <= v <= hi)


def one_of(*choices):
    return Allowed(f"one of {', '.join(choices)}", lambda v, _: v in choices)


def check(default, allowed):
    """A field with a default and the values it allows."""
    return field(default=default, metadata={"allowed": allowed})


def allowed_problems(section, prefix):
    """One message per field of `section` whose value its declared `Allowed` refuses."""
    out = []
    for f in dataclasses.fields(section):
        allowed, value = f.metadata.get("allowed"), getattr(section, f.name)
        if allowed and not allowed.ok(value, section):
            shown = repr(value) if isinstance(value, str) else value
            out.append(f"{prefix}{f.name}: must be {allowed.text}{allowed.why}, got {shown}")
    return out


# data.source as a Hugging Face dataset on the Hub: hf://datasets/<owner>/<name>@<revision>.
HUB_SOURCE = re.compile(r"hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[^\s@]+))?")
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass
class DatasetParams:
    """data.source a Hugging Face dataset: hf://datasets/<id>@<revision>, a save_to_disk directory or a
    directory of parquet files (docs/corpora.md)."""

    config: str = ""
    """The dataset's configuration (subset), for a dataset with several, e.g. a language of WikiANN; "": its only
    or default one."""
    splits: dict = field(default_factory=lambda: {"train": "train", "valid": "validation", "test": "test"})
    """The dataset's split that holds each of train, valid and test."""
    words: str = "tokens"
    """Column of each sentence's words: a list of strings."""
    tags: str = "ner_tags"
    """Column of each sentence's tags: a list of ClassLabel ids (their names are the tags) or of tag strings."""
    tag_names: list = field(default_factory=list)
    """The tag of each id, in id order, for a tags column of integers without ClassLabel names; else []."""
    documents: str = ""
    """Column of each sentence's document id (a document's sentences consecutive), for prepare.context; ""
    for none (a row whose only word is -DOCSTART- still starts a document, as in a CoNLL file)."""
    allow_moving_revision: bool = False
    """Accept a branch or tag name as the Hub revision; the data can then change under the same params."""

    def problems(self):
        out = _split_keys_problems("data.dataset.splits", self.splits)
        names = {}
        for split in (s for s in SPLITS if s in self.splits):
            name = self.splits[split]
            if not (isinstance(name, str) and name.strip()):
                out.append(f"data.dataset.splits.{split}: expected the name of a split of the dataset, got {name!r}")
            else:
                names.setdefault(name, []).append(split)
        out += [f"data.dataset.splits: {' and '.join(splits)} name the same split {name!r}; each needs one of its own"
                for name, splits in names.items() if len(splits) > 1]
        for key in ("words", "tags"):
            if not getattr(self, key).strip():
                out.append(f"data.dataset.{key}: must name a column of the dataset")
        if self.words == self.tags:
            out.append(f"data.dataset.words and data.dataset.tags both name the column {self.words!r}")
        if not all(isinstance(t, str) for t in self.tag_names):  # download checks each against the tag form
            out.append(f"data.dataset.tag_names: expected tag strings, e.g. [O, B-PER, I-PER], got {self.tag_names!r}")
        return out


@dataclass
class DataParams:
    source: str = "https://raw.githubusercontent.com/synalp/NER/master/corpus/CoNLL-2003"
    """An http(s) URL or a local directory holding the three splits of a CoNLL-format corpus; or a Hugging Face
    dataset: hf://datasets/<owner>/<name>@<commit sha>, a save_to_disk directory, a directory of parquet files."""
    remote_files: dict = field(default_factory=lambda: {"train": "eng.train", "valid": "eng.testa",
                                                        "test": "eng.testb"})
    """File name of each split (keys train, valid, test) at the source: appended to a URL, and the first
    name looked for in a local directory. The defaults are the original CoNLL-2003 English names."""
    local_files: dict = field(default_factory=lambda: {"train": "train.txt", "valid": "valid.txt",
                                                       "test": "test.txt"})
    """File name of each split looked for in a local directory when its remote_files name is not there."""
    sha256: dict = field(default_factory=dict)
    """Expected sha256 of each split (keys train, valid, test) as download writes it to data/raw/<split>.txt;
    data that does not match is refused. "" (not checked) is allowed for all but a URL; download records what
    it found."""
    dataset: DatasetParams = field(default_factory=DatasetParams)

    def is_remote(self):
        return self.source.startswith(("http://", "https://"))

    def hub_dataset(self):
        """(repository id, revision or None) of an hf://datasets/ source; None for any other source."""
        match = HUB_SOURCE.fullmatch(self.source)
        return (match["repo"], match["revision"]) if match else None

    def problems(self):
        out = self.dataset.problems()
        for key in ("remote_files", "local_files", "sha256"):
            out += _split_keys_problems(f"data.{key}", getattr(self, key))
        for key in ("remote_files", "local_files"):
            out += _file_names_problems(f"data.{key}", getattr(self, key))
        out += self._hub_problems()
        for split, digest in self.sha256.items():
            if split not in SPLITS:
                continue
            if digest == "" and self.is_remote():
                out.append(f"data.sha256.{split}: empty, but data.source is a URL; a download is always checked, "
                           "so set the file's sha256 (\"\" is allowed only for a local directory)")
            elif digest != "" and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                out.append(f"data.sha256.{split}: expected a 64-character lower-case hex sha256 string, or \"\" "
                           f"to skip the check for a local directory; got {digest!r}")
        return out

    def _hub_problems(self):
        if not self.source.startswith("hf://"):
            return []
        hub = self.hub_dataset()
        if hub is None:
            return [f"data.source {self.source!r}: a Hugging Face dataset is hf://datasets/<owner>/<name>@<commit sha>"]
        repo, revision = hub
        if revision is None:
            return [f"data.source {self.source!r}: no revision; pin the dataset's commit, hf://datasets/{repo}@<commit "
                    f"sha> (the commits: https://huggingface.co/datasets/{repo}/commits/main)"]
        if not COMMIT_SHA.fullmatch(revision) and not self.dataset.allow_moving_revision:
            return [f"data.source {self.source!r}: {revision!r} is not a commit sha but a branch or tag, whose data can "
                    f"change under the same params; pin the 40-character commit sha (https://huggingface.co/datasets/"
                    f"{repo}/commits/{revision}), or set data.dataset.allow_moving_revision: true to accept that"]
        return []


def _split_keys_problems(key, mapping):
    """One problem for missing and one for unknown split keys of a {split: value} mapping."""
    out = []
    missing = [s for s in SPLITS if s not in mapping]
    extra = [str(k) for k in mapping if k not in SPLITS]
    if missing:
        out.append(f"{key}: missing {', '.join(missing)} (need one per split: {', '.join(SPLITS)})")
    if extra:
        out.append(f"{key}: unknown split(s) {', '.join(extra)}; expected {', '.join(SPLITS)}")
    return out


def _file_names_problems(key, names):
    """Names that are not relative file names, and two splits naming one file (a split leaked into another)."""
    out, splits_of = [], {}
    for split in (s for s in SPLITS if s in names):
        name = names[split]
        if not (isinstance(name, str) and name.strip()) or name.startswith("/") or ".." in name.split("/"):
            out.append(f"{key}.{split}: expected a file name relative to data.source, got {name!r}")
        else:
            splits_of.setdefault(name, []).append(split)
    out += [f"{key}: {' and '.join(splits)} name the same file {name!r}; each split needs a file of its own"
            for name, splits in splits_of.items() if len(splits) > 1]
    return out


@dataclass
class ModelParams:
    name: str = "bert-base-cased"
    """Hugging Face hub id or local directory of a BERT-family encoder with a fast tokenizer."""

    def problems(self):
        return [] if self.name.strip() else ["model.name: must not be empty"]


@dataclass
class PrepareParams:
    max_length: int = check(128, between(8, 8192))
    """Sub-tokens per model input, special tokens included; longer sentences become windows."""
    window_overlap: int = check(32, Allowed("in [0, max_length/2]", lambda v, s: 0 <= v <= s.max_length // 2))
    """Sub-tokens of context two neighbouring windows of one long sentence share."""
    label_all_tokens: bool = False
    """Label later sub-tokens of a word with its I- label instead of -100 (run_ner.py's flag)."""
    max_train_sentences: int = check(0, at_least(0))
    """Use only the first N training sentences (0: all); for quick profiles."""
    context: int = check(0, at_least(0))
    """Document context: sub-tokens of the neighbouring sentences of the same document put before and after
    each sentence (labelled -100, never scored): up to this many on each side, as far as max_length leaves
    room after the sentence (0: sentence-level). A file without -DOCSTART- lines is one document."""

    def problems(self):
        return allowed_problems(self, "prepare.")


@dataclass
class LoraParams:
    """train.method lora (peft)."""

    r: int = check(8, at_least(1))
    """Rank of each update B·A."""
    alpha: int = check(16, at_least(1))
    """Scaling: the update is multiplied by alpha / r."""
    dropout: float = check(0.1, between(0, 1, upper_open=True))
    """Dropout on the LoRA branch's input."""
    target_modules: str = "auto"
    """'auto': peft's defaults for the model type (query and value for BERT-family models; where peft has
    none, as for DistilBERT and ModernBERT, every attention input projection, found by structure); else module
    names, comma-separated, each matching every module whose name ends with it (e.g. query,key,value,dense)."""

    def problems(self):
        out = allowed_problems(self, "train.lora.")
        if not self.target_modules.strip(" ,"):
            out.append("train.lora.target_modules: must be 'auto' or module names, e.g. query,value")
        return out


@dataclass
class AdapterParams:
    """train.method adapter (bottleneck adapters, nerpipe/model/methods/bottleneck.py)."""

    size: int = check(64, at_least(1))
    """Bottleneck width of each adapter."""
    target_modules: str = "auto"
    """'auto': each layer's attention output projection and feed-forward output, Houlsby et al.'s two
    places, found by the layer's structure in every family (BERT attention.output.dense and output.dense,
    DistilBERT out_lin and lin2, ModernBERT attn.Wo and mlp.Wo); else linear layers by name ending,
    comma-separated (e.g. output.dense)."""

    def problems(self):
        out = allowed_problems(self, "train.adapter.")
        if not self.target_modules.strip(" ,"):
            out.append("train.adapter.target_modules: must be 'auto' or name linear layers, e.g. output.dense")
        return out


@dataclass
class PromptParams:
    """train.method prompt (peft prompt tuning)."""

    virtual_tokens: int = check(20, at_least(1))
    """Trainable prompt embeddings put before every input (they take positions: max_length + this must fit)."""

    def problems(self):
        return allowed_problems(self, "train.prompt.")


@dataclass
class TrainParams:
    epochs: int = check(3, at_least(1))
    """Passes over the training data (an upper bound when max_steps or early stopping ends first)."""
    max_steps: int = check(0, at_least(0))
    """Stop after this many optimizer steps (0: no limit)."""
    batch_size: int = check(32, at_least(1))
    """Sentences (windows) per forward pass."""
    grad_accum_steps: int = check(1, at_least(1))
    """Forward passes per optimizer step."""
    weight_decay: float = check(0.01, at_least(0))
    """AdamW weight decay, not applied to biases and LayerNorm weights."""
    warmup_ratio: float = check(0.1, between(0, 1))
    """Fraction of optimizer steps with linear warmup; then linear decay to 0."""
    dropout: float = check(0.1, between(0, 1, upper_open=True))
    """Hidden and attention dropout of the encoder and the classifier."""
    max_grad_norm: float = check(1.0, at_least(0))
    """Gradient clipping norm (0: no clipping)."""
    seed: int = check(42, at_least(0))
    """Seeds the head initialisation, dropout and data order."""
    method: str = check("full", one_of(*METHODS))
    """How the model is fine-tuned (the head always trains): full (every weight), top_layers (the top
    `top_layers` encoder layers), head (the head only), bitfit (every bias), lora, adapter or prompt
    (each with its settings below). See nerpipe/model/methods/ and docs/methods.md."""
    top_layers: int = check(2, at_least(1))
    """train.method top_layers: how many encoder layers, counted from the top, train."""
    lora: LoraParams = field(default_factory=LoraParams)
    adapter: AdapterParams = field(default_factory=AdapterParams)
    prompt: PromptParams = field(default_factory=PromptParams)
    eval_every_steps: int = check(0, at_least(0))
    """Evaluate dev F1 every N optimizer steps (0: once per epoch)."""
    patience: int = check(2, at_least(0))
    """Stop after this many evaluations without a better dev F1 (0: never stop early). Evaluations
    made during the warm-up (train.warmup_ratio) do not count."""
    checkpoint_every: int = check(200, at_least(0))
    """Write a resumable checkpoint every N optimizer steps, and one at the end, kept until the stage's
    outputs and MLflow logging are done (0: never, except on Ctrl-C)."""
    bf16: str = check("auto", one_of("auto", "on", "off"))
    """The precision of training and evaluation: 'auto', 'on' or 'off'. 'on' trains under bf16
    autocast and, on a GPU, lets the matmuls autocast keeps in fp32 use TF32; 'off' is strict IEEE
    fp32 everywhere (no TF32), the numbers of a plain fp32 transformers run. 'auto' is 'on' where
    bf16 is native -- a GPU of compute capability 8.0 or later (Ampere on; not T4 or V100), a CPU
    with avx512_bf16 or AMX -- and 'off' elsewhere."""
    static_widths: list = field(default_factory=list)
    """Pad every training batch to the smallest of these widths (sub-tokens, ascending) that holds its
    longest row, instead of to that row's own length: a few fixed shapes, which CUDA graphs and
    compiled kernels can reuse, at the cost of more padding. Empty (the default): dynamic widths. A
    batch wider than the last keeps its own width. docs/speed.md has the measurements."""
    processes: int = check(1, at_least(1))
    """Training processes working on each optimizer step (torch.distributed, DDP: one GPU each on
    CUDA, gloo on CPU). N > 1 runs the train stage under `torchrun --standalone --nproc-per-node N`;
    under a torchrun started by hand (several machines) it must equal the processes started in all.
    The global batch, the number of steps and the learning-rate schedule do not depend on it."""

    def problems(self):
        out = allowed_problems(self, "train.") + self.lora.problems() + self.adapter.problems() + self.prompt.problems()
        widths = self.static_widths
        if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            out.append(f"train.static_widths: expected positive integers, got {widths!r}")
        elif any(a >= b for a, b in zip(widths, widths[1:])):
            out.append(f"train.static_widths: must be strictly ascending, got {widths!r}")
        return out



@dataclass
class EvaluateParams:
    batch_size: int = check(64, at_least(1))
    """Windows per forward pass when predicting."""
    bootstrap_samples: int = check(1000, at_least(MIN_RESAMPLES, " (the interval's 2.5th and 97.5th percentiles "
                                                              "need that many resamples)"))
    """Resamples behind each F1's 95% interval, of the split's documents (or its sentences, in a corpus without
    -DOCSTART- markers): docs/experiments.md, "Confidence intervals and significance"."""
    bootstrap_seed: int = 0
    """Seed of those resamples: the same seed and predictions give the same intervals."""

    def problems(self):
        return allowed_problems(self, "evaluate.")


@dataclass
class MlflowParams:
    experiment: str = "conll2003-ner"
    """MLflow experiment every run is recorded in."""
    register_model: str = ""
    """If not empty, register the trained model in the MLflow model registry under this name."""

    def problems(self):
        return [] if self.experiment.strip() else ["mlflow.experiment: must not be empty"]


@dataclass
class Params:
    lr: float = check(5e-5, above(0))
    """Peak AdamW learning rate (top level so `dvc exp run -S lr=3e-5` works as written)."""
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)

    def problems(self):
        out = allowed_problems(self, "")
        for f in dataclasses.fields(self):
            if dataclasses.is_dataclass(getattr(self, f.name)):
                out += getattr(self, f.name).problems()
        return out


def _type_name(tp):
    return {float: "a number", int: "an integer", bool: "true/false", str: "a string", dict: "a mapping",
            list: "a list"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp):
    """Return (value, ok). YAML 1.2 already gives floats for 3e-05; ints are fine where floats are."""
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value) if ok else value), ok
    if tp is int:
        return value, isinstance(value, int) and not isinstance(value, bool)
    if tp is dict:
        return (dict(value) if isinstance(value, dict) else value), isinstance(value, dict)
    if tp is list:
        return (list(value) if isinstance(value, list) else value), isinstance(value, list)
    return value, isinstance(value, tp)


# Keys of earlier releases, with what replaced them.
RENAMED = {"train.trainable": "replaced by train.method (all -> full, head -> head, top-N -> top_layers with "
                              "train.top_layers: N)"}


def _build(cls, raw, prefix, problems):
    """Build dataclass `cls` from mapping `raw`, appending a message per bad key to `problems`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {raw!r}")
        return cls()
    for key in raw:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(prefix + n for n in near)}?" if near else ""
            hint = f"; {RENAMED[prefix + key]}" if prefix + key in RENAMED else hint
            problems.append(f"{prefix}{key}: unknown key{hint} (valid keys: {', '.join(prefix + n for n in names)})")
    values = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], f"{prefix}{name}.", problems)
            continue
        value, ok = _coerce(raw[name], tp)
        if ok:
            values[name] = value
        else:
            problems.append(f"{prefix}{name}: expected {_type_name(tp)}, got {raw[name]!r}")
    return cls(**values)


def parse_params(raw, source="params.yaml"):
    """Validate a params mapping; raise one UserError listing every problem."""
    problems = []
    params = _build(Params, raw or {}, "", problems)
    # Keys with a bad type kept their defaults, so the range checks below are still meaningful.
    problems += params.problems()
    if problems:
        raise UserError(f"{source} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return params


def read_yaml(path):
    """Read a YAML file with YAML 1.2 rules; a syntax error names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None


def load_params(path="params.yaml"):
    return parse_params(read_yaml(path), source=str(path))


# The sections of params.yaml the train stage reads: dvc.yaml lists them as its params, and
# tests/test_pipeline_e2e.py checks at run time that it reads these and nothing else. The data.* keys are
# MLflow params only: a checkpoint's settings (nerpipe.train.checkpoints.trajectory_params) leave them out,
# since the prepared data's own digest is in them, whatever source it came from; evaluate.* is never its
# business.
TRAIN_SECTIONS = ("lr", "data", "model", "prepare", "train", "mlflow")


def flatten(params, sections=None):
    """`{'train.weight_decay': 0.01, ...}` -- the flat key names MLflow and DVC use. `sections`: only these
    top-level keys (the others are not read at all)."""
    out = {}

    def walk(obj, prefix):
        for key, value in obj.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    names = sections or [f.name for f in dataclasses.fields(params)]
    values = {name: getattr(params, name) for name in names}
    walk({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in values.items()}, "")
    return out
