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


# --- no internal jargon ------------------------------------------------------------------------------

# How the work was organised, which a reader of the project has no use for: which issue built a thing
# (say what it built), and the sessions, machines lent and draws of the environment it was built in.
JARGON = re.compile(r"\b(issues? #?\d+|sessions?|lent|not drawn|predecessors?)\b", re.I)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_no_internal_jargon(page):
    text = page.read_text(encoding="utf-8")
    assert [f"line {text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r}" for m in JARGON.finditer(text)] == []


def test_the_jargon_check_finds_it():
    found = JARGON.findall("Built in issue 24. No GPU was lent this session (not drawn); its predecessor. "
                           "A lentil; the sessionless sorter; figures drawn as PNGs.")
    assert found == ["issue 24", "lent", "session", "not drawn", "predecessor"]
