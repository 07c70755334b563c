"""Docs that cannot rot: the site builds strictly (any mkdocs warning fails it), the generated reference
pages are current, and every command, make target, param key, file path and results table in README.md
and docs/ (commands and paths also in BENCHMARKS.md and bench/README.md) is checked against the code.
tests/test_docs_blocks.py runs the shell blocks; tests/test_docs_facts.py checks defaults, citations,
provenance and wording."""

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import docs_reference  # noqa: E402  (tools/ is no package)

# What users read: the README and the hand-written pages (the reference pages are generated, and
# docs/benchmarks.md includes BENCHMARKS.md, which holds measurement logs rather than instructions).
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
# The benchmark pages too, for their commands and paths (their numbers: tests/test_docs_facts.py).
BENCH_PAGES = [ROOT / "BENCHMARKS.md", ROOT / "bench" / "README.md"]


def test_reference_pages_are_current():
    stale = [name for name, text in docs_reference.pages().items()
             if (docs_reference.REFERENCE / name).read_text(encoding="utf-8") != text]
    assert not stale, f"docs/reference/{stale} differ from the code: run `make docs`"


def build_site(root, site):
    """mkdocs build of the docs under `root` into `site`: (exit status, its whole log). Without `-q`, which
    sets mkdocs's logger to ERROR so that warnings are neither printed nor counted by strict mode."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                            cwd=root, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    return result.returncode, result.stdout + result.stderr


def site_warnings(log):
    return [line for line in log.splitlines() if re.match(r"(WARNING|ERROR)\b", line)]


def test_site_builds_strictly(tmp_path):
    """strict: true with link and anchor validation (mkdocs.yml): a broken link, anchor or nav entry fails,
    and so does any other warning."""
    returncode, log = build_site(ROOT, tmp_path / "site")
    assert (returncode, site_warnings(log)) == (0, []), log
    assert (tmp_path / "site" / "reference" / "params" / "index.html").exists()
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "Where the speed comes from" in benchmarks  # BENCHMARKS.md itself, included
    assert 'href="../serving/#load-benchmark"' in benchmarks  # its `docs/serving.md` link, inside the site


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    """The strict build of a copy of the docs with one broken link and one broken anchor in index.md."""
    for name in ("docs", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "BENCHMARKS.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8") + "\nSee [the guide](no-such-page.md) and "
                     "[its limits](install.md#no-such-heading).\n", encoding="utf-8")
    returncode, log = build_site(tmp_path, tmp_path / "site")
    warnings = "\n".join(site_warnings(log))
    assert returncode != 0, log
    assert "'no-such-page.md'" in warnings and "'install.md#no-such-heading'" in warnings \
        and "#no-such-heading" in warnings, log


# --- what the pages say ------------------------------------------------------------------------------

def code_blocks_and_spans(text):
    """(shell lines of fenced code blocks, with `\\` continuations joined; inline code spans outside them).
    In a transcript (`$ ` prompts) only the prompted lines count, and not one whose output is an error:
    that is an example of what is refused."""
    lines, spans, block = [], [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if block is not None and block[0] in ("", "bash", "sh", "console"):
                lines += shell_lines(block[1:])
            block = None if block is not None else [line.strip()[3:]]
        elif block is not None:
            block.append(line.strip())
        else:
            spans += re.findall(r"`([^`]+)`", line)
    return lines, spans


def shell_lines(block):
    if any(line.startswith("$ ") for line in block):
        prompts = [i for i, line in enumerate(block) if line.startswith("$ ")] + [len(block)]
        return [block[i][2:] for i, end in zip(prompts, prompts[1:])
                if not re.search(r"error|unknown key", " ".join(block[i + 1:end]), re.I)]
    out = []
    for line in block:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + line
        else:
            out.append(line)
    return out


SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", "$(", ";;"}
REDIRECTS = {">", ">>", "<", "2>", "2>&1", "&>"}


def commands(line):
    """The simple commands of a shell line, as word lists: comments, redirections, `VAR=x` prefixes and
    `source`/`time`/`sudo` wrappers dropped; `<placeholders>` kept as one word."""
    line = re.sub(r"<([\w .:/|-]+)>", lambda m: "PLACEHOLDER_" + re.sub(r"\W", "_", m.group(1)), line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote: not a shell line
        return []
    out, current, skip = [], [], False
    for word in words + [";"]:
        if word in SEPARATORS or word.endswith("$"):
            while current and (re.match(r"^\w+=", current[0]) or current[0] in ("time", "sudo", "exec")):
                current.pop(0)
            if current:
                out.append(current)
            current, skip = [], False
        elif word in REDIRECTS or word.startswith(">"):
            skip = True
        elif skip:
            skip = False
        else:
            current.append(word)
    return out


@cache
def nerpipe_parser():
    return docs_reference.nerpipe_parsers()["nerpipe"]


@cache
def stage_parser(script):
    return docs_reference.stage_parser(ROOT / script)


def parse_error(parser, args):
    """None if argparse accepts `args`, else what it says."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as stop:
        return None if stop.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


@cache
def make_targets():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w.-]+):(?!=)", text, re.M))


@cache
def param_keys():
    """Every key of params.yaml, nested ones as dotted names (what set-params and `-S` accept)."""
    keys = set()

    def walk(node, prefix):
        for key, value in node.items():
            keys.add(prefix + str(key))
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text(encoding="utf-8")), "")
    return keys


def command_problems(words):
    """What is wrong with one command of the docs, if it is one of nerpipe's, make's or a param setting."""
    name, args = words[0], words[1:]
    problems = []
    if name in ("nerpipe", ".venv/bin/nerpipe"):
        error = parse_error(nerpipe_parser(), args)
        problems += [f"`{shlex.join(words)}`: {error}"] if error else []
        if args[:1] == ["set-params"]:
            problems += [f"`{shlex.join(words)}`: no param {a.split('=')[0]!r}"
                         for a in args[1:] if "=" in a and a.split("=")[0] not in param_keys()]
    elif name in ("python", "python3", ".venv/bin/python") and args and args[0].startswith("stages/"):
        if not (ROOT / args[0]).exists():
            return [f"`{shlex.join(words)}`: no script {args[0]}"]
        error = parse_error(stage_parser(args[0]), args[1:])
        problems += [f"`{shlex.join(words)}`: {error}"] if error else []
    elif name == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        problems += [f"`{shlex.join(words)}`: no Makefile target {t!r}" for t in targets if t not in make_targets()]
    elif name == "dvc" and args[:2] == ["exp", "run"]:
        for flag, value in zip(args, args[1:]):
            if flag in ("-S", "--set-param") and value.split("=")[0] not in param_keys():
                problems.append(f"`{shlex.join(words)}`: no param {value.split('=')[0]!r}")
    return problems


def page_problems(text):
    lines, spans = code_blocks_and_spans(text)
    # An inline span of one or two words (`nerpipe compare`) names a command rather than running one.
    runnable = [s for s in spans if len(s.split()) > 2 or s.split()[0] == "make"]
    return [p for line in lines + runnable for words in commands(line) for p in command_problems(words)]


@pytest.mark.parametrize("page", PAGES + BENCH_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_parses_and_names_what_exists(page):
    assert page_problems(page.read_text(encoding="utf-8")) == []


def test_the_command_check_finds_what_is_wrong():
    text = """
```bash
.venv/bin/nerpipe predict --no-such-flag x          # a flag predict has not
nerpipe set-params train.epoch=1                    # a key params.yaml has not
python stages/train.py --data data/prepared         # required flags missing
make repro && make no-such-target DATA=/x
dvc exp run -S lr=3e-5 -S train.lr=1
```
And `nerpipe compare a b --no-such-flag` inline, `make deploy`; `nerpipe compare` alone is a name.
"""
    problems = "\n".join(page_problems(text))
    for expected in ["`.venv/bin/nerpipe predict --no-such-flag x`: nerpipe: error: unrecognized arguments", "no param 'train.epoch'",
                     "the following arguments are required: --model-out", "no Makefile target 'no-such-target'",
                     "no param 'train.lr'", "`nerpipe compare a b --no-such-flag`", "no Makefile target 'deploy'"]:
        assert expected in problems
    assert len(problems.splitlines()) == 7


# --- file paths in backticks -------------------------------------------------------------------------

@cache
def tracked_roots():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {f.split("/")[0] for f in files.splitlines()}


@cache
def pipeline_outputs():
    """The paths dvc.yaml's stages write: a doc may name them (and files inside them) before they exist."""
    dvc = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    outs = set()
    for stage in dvc["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            outs.update(next(iter(e)) if isinstance(e, dict) else e for e in stage.get(kind) or [])
    return outs


def path_problem(span):
    """A span that reads as a path in this repository (`nerpipe/x.py`, `data/model/`) and is none."""
    path = re.sub(r"(::\S*|:\d+)$", "", span.strip()).rstrip("/")
    if not re.fullmatch(r"\.?[\w.-]+(/[\w.-]+)+", path) or path.split("/")[0] not in tracked_roots() | {"data", "reports"}:
        return None
    if (ROOT / path).exists() or any(path == o or path.startswith(o + "/") or o.startswith(path + "/")
                                     for o in pipeline_outputs()):
        return None
    ignored = any(subprocess.run(["git", "check-ignore", "-q", "--no-index", p], cwd=ROOT).returncode == 0
                  for p in (path, path + "/"))
    return None if ignored else f"`{span}`: no such file in the repository"


@pytest.mark.parametrize("page", PAGES + BENCH_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_path_in_backticks_exists(page):
    _, spans = code_blocks_and_spans(page.read_text(encoding="utf-8"))
    assert [p for p in map(path_problem, spans) if p] == []


def test_the_path_check_finds_a_missing_file():
    assert path_problem("nerpipe/core/params.py") is None
    assert path_problem("tests/test_docs.py::test_the_path_check_finds_a_missing_file") is None
    assert path_problem("data/model/adapter/") is None  # inside a pipeline output
    assert path_problem("mlartifacts/") is None  # gitignored
    assert path_problem("nerpipe/core/paramz.py") == "`nerpipe/core/paramz.py`: no such file in the repository"
    assert path_problem("code/nerpipe/") is None  # not a path of this repository (inside an MLflow model)


# --- results tables ----------------------------------------------------------------------------------

# A committed script that computes the table from the data is a source too (tools/interval_widths.py).
SOURCE = re.compile(r"^Source: .*([0-9a-f]{32}|MLflow run|DVC experiment|BENCHMARKS\.md|benchmarks\.md|tools/\w+\.py)",
                    re.M)


def _measured(cell):
    """A decimal such as 82.14 or +0.31; not an address or a version such as 127.0.0.1 or 2.60.0."""
    return bool(re.match(r"[-+±]?\d[\d,]*\.\d", cell)) and not re.match(r"\d+\.\d+\.\d", cell)


def unsourced_tables(text):
    """First rows of the tables holding measured numbers (a decimal) in a section with no `Source:` line
    naming the MLflow run or the benchmark they came from."""
    out = []
    for section in re.split(r"^#+ .*$", text, flags=re.M):
        tables = re.findall(r"((?:^\|.*\|\n)+)", section, re.M)
        measured = [t for t in tables if any(_measured(cell.strip(" *`"))
                                             for row in t.splitlines()[2:] for cell in row.split("|"))]
        if measured and not SOURCE.search(section):
            out += [t.splitlines()[0] for t in measured]
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_results_table_names_its_source(page):
    assert unsourced_tables(page.read_text(encoding="utf-8")) == []


def test_the_source_check_finds_an_unsourced_table():
    table = "| | dev F1 |\n|---|---:|\n| after | 82.14 |\n"
    assert unsourced_tables(f"## A\n\n{table}") == ["| | dev F1 |"]
    assert unsourced_tables(f"## A\n\nSource: MLflow run `0aa79684bf6d455a93cbe807b5dab608`.\n\n{table}") == []
    assert unsourced_tables(f"## A\n\nSource: `python tools/interval_widths.py x`.\n\n{table}") == []
    assert unsourced_tables("## A\n\n| stage | script |\n|---|---|\n| train | `stages/train.py` |\n") == []
    assert unsourced_tables("## A\n\n| flag | default |\n|---|---|\n| `--host` | 127.0.0.1 |\n") == []


def test_the_readme_is_short():
    """The README answers what, how and what you get; the rest is on the docs pages."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES + BENCH_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_code_block_is_closed(page):
    """An unclosed fence turns the rest of the page into code, and its links and checks silently away."""
    fences = [line for line in page.read_text(encoding="utf-8").splitlines() if line.lstrip().startswith("```")]
    assert len(fences) % 2 == 0


def test_the_readme_links_to_files_that_exist():
    """The README is outside the site, so mkdocs does not validate its links: every relative one names a file."""
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    relative = [link for link in links if not re.match(r"\w+:", link)]
    assert len(relative) > 10 and [link for link in relative if not (ROOT / link).exists()] == []
