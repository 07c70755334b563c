"""What the docs state as fact agrees with the repository: a default they quote is what params.yaml ships,
a README section they cite exists, and the public pages speak of what was built, not of how the work was
organised (no issue numbers, no sessions)."""

import re
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent

# Everything a reader of the repository or the site reads as documentation.
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "bench" / "README.md",
         *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "reference").glob("*.md"))]
IDS = [p.relative_to(ROOT).as_posix() for p in PAGES]


def shipped_params(text=None):
    """{dotted key: value} of every leaf of params.yaml (or of `text`, a params.yaml)."""
    tree = YAML(typ="safe", pure=True).load(text if text is not None else (ROOT / "params.yaml").read_text(encoding="utf-8"))
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + str(key)] = value

    walk(tree, "")
    return out


# --- defaults the docs quote -------------------------------------------------------------------------

# A number followed by one of these words, in a sentence about "the default", is that key's default.
UNITS = {"epochs": "train.epochs", "epoch": "train.epochs", "resamples": "evaluate.bootstrap_samples"}


def _key(name, params):
    """The dotted key `name` stands for: itself, or the one key ending in `.name`; None if none or several."""
    if name in params:
        return name
    matches = [k for k in params if k.endswith("." + name)]
    return matches[0] if len(matches) == 1 else None


def _same(quoted, value):
    quoted = quoted.strip("`'\" ").replace(",", "")
    if isinstance(value, bool):
        return quoted.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(quoted) == float(value)
        except ValueError:
            return False
    return quoted == str(value)


VALUE = r"`?(?P<value>[\w.+-]+|\[\])`?"
KEY = r"`(?P<key>[\w.]+)(?:: [^`]*)?`"  # `train.top_layers`, or `prepare.context: N` (a setting's form)
# Each way the pages write "KEY's default is VALUE".
DEFAULT_FORMS = [
    re.compile(KEY + r"[^`.;]{0,40}?\(?default:? (?:is )?" + VALUE),               # `prepare.context: N` (default `0`
    re.compile(r"default `(?P<key>[\w.]+): (?P<value>[^`]+)`"),                    # the default `max_length: 128`
    re.compile(KEY + r", (?P<value>[\d,.]+) by default"),                          # `evaluate.bootstrap_samples`, 1,000 by default
    re.compile(r"`(?P<value>[^`]+)` \(the default `(?P<key>[\w.]+)`\)"),           # `bert-base-cased` (the default `model.name`)
    re.compile(r"`(?:nerpipe set-params |-S )?(?P<key>[\w.]+)=[^`]*`\)?;? the default is " + VALUE),  # `...epochs=1`; the default is 3
    re.compile(r"the default (?:is )?(?P<value>\d[\d,.]*) (?P<unit>epochs?|resamples)"),  # at the default 3 epochs
    re.compile(r"the default \([^)]*?(?P<value>\d+) (?P<unit>epochs?)\)"),        # the default (`bert-base-cased`, 3 epochs)
]


def quoted_defaults(text, params):
    """(key, quoted value, params.yaml's value) for each default the text quotes, joined across line breaks."""
    prose = re.sub(r"\s*\n\s*", " ", text)
    out = []
    for form in DEFAULT_FORMS:
        for match in form.finditer(prose):
            found = match.groupdict()
            key = UNITS[found["unit"]] if found.get("unit") else _key(found["key"], params)
            if key is not None:
                out.append((key, found["value"].rstrip(".,"), params[key]))
    return out


def wrong_defaults(text, params):
    return [f"the docs say {key} defaults to {quoted!r}; params.yaml ships {value!r}"
            for key, quoted, value in quoted_defaults(text, params) if not _same(quoted, value)]


# The reference pages are generated from params.yaml itself (test_docs.py::test_reference_pages_are_current).
WRITTEN = [p for p in PAGES if p.parent.name != "reference"]


@pytest.mark.parametrize("page", WRITTEN, ids=[p.relative_to(ROOT).as_posix() for p in WRITTEN])
def test_every_quoted_default_is_what_params_yaml_ships(page):
    assert wrong_defaults(page.read_text(encoding="utf-8"), shipped_params()) == []


def test_the_quoted_defaults_are_found():
    """The forms the pages use, each found; the README's own sentences among them."""
    params = shipped_params()
    found = {key for page in PAGES[:1] + [ROOT / "docs" / "index.md", ROOT / "docs" / "methods.md",
                                           ROOT / "docs" / "experiments.md", ROOT / "docs" / "context.md"]
             for key, _, _ in quoted_defaults(page.read_text(encoding="utf-8"), params)}
    assert {"train.epochs", "train.top_layers", "evaluate.bootstrap_samples", "prepare.context",
            "prepare.max_length"} <= found


def test_a_changed_params_yaml_makes_the_docs_wrong():
    """params.yaml's train.epochs changed from 3 to 5: the README's "the default is 3" is then wrong."""
    changed = (ROOT / "params.yaml").read_text(encoding="utf-8").replace("  epochs: 3\n", "  epochs: 5\n")
    params = shipped_params(changed)
    assert params["train.epochs"] == 5
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "the default is 3" in readme
    assert "the docs say train.epochs defaults to '3'; params.yaml ships 5" in wrong_defaults(readme, params)
    assert wrong_defaults("`train.top_layers` encoder layers (default 3)", params) == \
        ["the docs say train.top_layers defaults to '3'; params.yaml ships 2"]
    assert wrong_defaults("(`evaluate.bootstrap_samples`, 1,000 by default)", params) == []


# --- README sections cited elsewhere -------------------------------------------------------------------

CITATION = re.compile(r"README(?:\.md)?,? \"(?P<section>[^\"]+)\"")


def readme_sections():
    return {m.strip() for m in re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)}


def cited_sections():
    """(file, section) for each `README "Section"` in a tracked text file, and each `README.md#anchor` link."""
    files = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.yaml", "*.yml", "*.toml", "*.sh", "Makefile"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    out = []
    for name in files:
        if name.startswith("tests/test_docs") or not (ROOT / name).exists():
            continue
        text = re.sub(r"\s*\n\s*#?\s*", " ", (ROOT / name).read_text(encoding="utf-8"))
        out += [(name, m["section"]) for m in CITATION.finditer(text)]
        out += [(name, "#" + anchor) for anchor in re.findall(r"README\.md#([\w-]+)", text)]
    return out


def _anchor(heading):
    return re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-")


def test_every_cited_readme_section_exists():
    sections = readme_sections()
    anchors = {"#" + _anchor(s) for s in sections}
    missing = [f"{name}: README {section!r}" for name, section in cited_sections()
               if section not in sections and section not in anchors]
    assert missing == []


def test_the_citation_check_reads_what_the_files_write():
    assert [m["section"] for m in CITATION.finditer('see README "What you get" and (README, "The pipeline")')] == \
        ["What you get", "The pipeline"]
    assert {"What you get", "The pipeline", "Documentation"} <= readme_sections()
    assert _anchor("Where things are") == "where-things-are"


def test_the_install_page_names_every_extra():
    """docs/install.md lists the extras the lock holds: pyproject.toml's, all of them."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"])
    listed = re.search(r"its extras \(([^)]*)\)", (ROOT / "docs" / "install.md").read_text(encoding="utf-8"))
    assert listed and set(re.findall(r"`(\w+)`", listed[1])) == extras


# --- numbers a reader can check ---------------------------------------------------------------------

# A measured number: a decimal with two or more places (82.14, 0.0108), a ratio (1.59x, 4×), or a
# decimal with a unit (96.3 s, 5.6 %). Not a version (2.13.0, transformers 4.57, Python 3.11, Ubuntu 20.04) nor a
# setting in code.
MEASURED = re.compile(r"(?<![\w.=])(?<!transformers )(?<!torch )(?<!Python\s)(?<!Ubuntu\s)(?<!ships\s)(?:[-+±]?\d[\d,]*\.\d{2,}(?![\d.])"
                      r"|\d+(?:\.\d+)?[x×](?=[\s,.;)])|\d+\.\d+\s?(?:%|s\b|ms\b|min\b))")
# What each such number needs, in its section or a section above it: the commit it was measured at, the
# machine, and where it comes from (a `Source:` line, the command, in a block or a code span, or the page
# of the measurement).
NEEDS = {"commit": re.compile(r"commits?[ `]+[0-9a-f]{7,40}\b|`[0-9a-f]{7}`"),
         "machine": re.compile(r"Xeon|EPYC|H100|H200|A100|\d-core", re.I),
         "source": re.compile(r"^Source: |```(?:bash|console)|\]\([^)]*(?:BENCHMARKS\.md|benchmarks\.md|results[/.])"
                              r"|`(?:PYTHONPATH=\S+ )?(?:\S*python \S+|python -m |bench\.|dvc |nerpipe |make )[^`]*`", re.M)}


def sections(text):
    """(heading, its level, body) of each section, fenced code kept in the body; the text before the first
    heading is level 0."""
    out, heading, level, body, fenced = [], "", 0, [], False
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith("```")
        match = None if fenced else re.match(r"(#+) ", line)
        if match:
            out.append((heading, level, "\n".join(body)))
            heading, level, body = line, len(match[1]), []
        else:
            body.append(line)
    return out + [(heading, level, "\n".join(body))]


def unchecked_numbers(text):
    """'heading: what is missing (a number)' for each section whose measured numbers, in prose or tables,
    lack a commit, a machine or a source in it and in the sections that hold it."""
    out, above = [], []
    for heading, level, body in sections(text):
        above = [(lvl, t) for lvl, t in above if lvl < level] + [(level, heading + "\n" + body)]
        prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", body, flags=re.S))
        numbers = MEASURED.findall(prose)
        context = "\n".join(t for _, t in above)
        missing = [need for need, pattern in NEEDS.items() if not pattern.search(context)]
        if numbers and missing:
            out.append(f"{heading or '(top)'}: no {', no '.join(missing)} (e.g. {numbers[0]})")
    return out


CHECKED = [pytest.param(p, id=p.relative_to(ROOT).as_posix()) for p in PAGES if p.parent.name != "reference"]


@pytest.mark.parametrize("page", CHECKED)
def test_every_number_names_its_commit_machine_and_source(page):
    assert unchecked_numbers(page.read_text(encoding="utf-8")) == []


def test_the_number_check_reads_prose_and_tables():
    prose = "## Speed\n\nnerpipe trains 1.4x faster than fp32.\n"
    assert unchecked_numbers(prose) == ["## Speed: no commit, no machine, no source (e.g. 1.4x)"]
    table = "## F1\n\n| | dev |\n|---|---:|\n| after | 82.14 |\n"
    assert unchecked_numbers(table) == ["## F1: no commit, no machine, no source (e.g. 82.14)"]
    sourced = ("# Results\n\nOn a 2-core Intel Xeon, commit `106d6fb`.\n\n## F1\n\nSource: `docs/results/f1.json`.\n\n"
               + table[6:] + "\n## Setup\n\n`torch 2.13.0`, transformers 4.57, `lr: 5e-5`, 95% intervals.\n")
    assert unchecked_numbers(sourced) == []
    # A setting (key=value) is not a measurement; the same number measured is.
    assert unchecked_numbers("## Run\n\n`dvc exp run -S lr=0.002` trained.\n") == []
    assert unchecked_numbers("## Run\n\nIt trained in 0.002 s.\n") == ["## Run: no commit, no machine, no source (e.g. 0.002)"]


# A source a reader has: a file of the repository, a page of the docs, or else the page says it is gone.
UNCOMMITTED = re.compile(r"MLflow run|mlflow\.db|DVC experiment", re.I)
SAYS_GONE = re.compile(r"not committed|never committed|gone", re.I)


def unreadable_sources(text):
    """Each `Source:` paragraph that points into an MLflow database or a clone's experiments, neither of
    which the repository holds, without saying so."""
    paragraphs = re.findall(r"^Source: .*?(?:\n\n|\Z)", text, re.M | re.S)
    return [p.splitlines()[0] for p in paragraphs if UNCOMMITTED.search(p) and not SAYS_GONE.search(p)]


@pytest.mark.parametrize("page", CHECKED)
def test_every_source_is_one_a_reader_has(page):
    assert unreadable_sources(page.read_text(encoding="utf-8")) == []


def test_the_source_check_finds_an_mlflow_run():
    assert unreadable_sources("Source: MLflow run `0aa7`.\n\n| a |\n") == ["Source: MLflow run `0aa7`."]
    assert unreadable_sources("Source: MLflow run `0aa7`, in a `mlflow.db` that\nwas never committed.\n") == []
    assert unreadable_sources("Source: `docs/results/x.json`.\n") == []


# --- no internal jargon ------------------------------------------------------------------------------

# How the work was organised, which a reader of the project has no use for: which issue built a thing
# (say what it built), and the sessions, machines lent and draws of the environment it was built in.
JARGON = re.compile(r"\b(issues?\s+#?\d+|sessions?|lent|not drawn|predecessors?)\b", re.I)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_no_internal_jargon(page):
    text = page.read_text(encoding="utf-8")
    assert [f"line {text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r}" for m in JARGON.finditer(text)] == []


def test_the_jargon_check_finds_it():
    found = JARGON.findall("Built in issue 24. No GPU was lent this session (not drawn); its predecessor. "
                           "A lentil; the sessionless sorter; figures drawn as PNGs.")
    assert found == ["issue 24", "lent", "session", "not drawn", "predecessor"]
