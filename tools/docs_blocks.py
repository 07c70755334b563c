"""The shell blocks of the README and the docs, and whether the tests run each one.

    python tools/docs_blocks.py            # every shell block: page:line, run or not run (and why), first command

A shell block is a fenced block marked `bash`, `sh`, `shell` or `console`, or an unmarked one holding a
transcript (lines starting `$ `). tests/test_docs_blocks.py runs each, in document order, in one scratch
copy of the repository on the tiny fixtures. The line right before a block's fence may say otherwise:

    <!-- not run: REASON -->    not runnable by the tests, and why (a GPU, several machines, the hub, hours
                                 on the real data); docs/reference/untested.md lists these blocks
    <!-- serves: URL -->        the block starts a server that runs until stopped: the test starts it, waits
                                 until URL answers, then stops it

In a transcript each `$ ` line is run alone, and one whose output reads as an error must fail.
"""

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"^<!-- (?P<kind>not run|serves): (?P<value>.+?) -->$")


@dataclass
class Block:
    page: str        # relative to the repository root
    line: int        # of the opening fence, 1-based
    text: str        # the block's lines, dedented to the fence
    marker: str      # "", "not run" or "serves"
    value: str = ""  # the reason not run, or the URL that answers

    @property
    def transcript(self):
        return any(line.startswith("$ ") for line in self.text.splitlines())

    def first_command(self):
        """The first line that is a command (in a transcript, the first prompted one), not a comment."""
        for line in self.text.splitlines():
            if self.transcript and not line.startswith("$ "):
                continue
            line = line.removeprefix("$ ").strip()
            if line and not line.startswith("#"):
                return line
        return ""

    def commands(self):
        """A transcript's commands, each with whether its output reads as an error (then it must fail)."""
        lines, out = self.text.splitlines(), []
        prompts = [i for i, line in enumerate(lines) if line.startswith("$ ")] + [len(lines)]
        for i, end in zip(prompts, prompts[1:]):
            command, j = lines[i][2:], i + 1
            while command.endswith("\\") and j < end:  # a continued command
                command, j = command[:-1].rstrip() + " " + lines[j].strip(), j + 1
            out.append((command, bool(re.search(r"\berror\b|unknown key", "\n".join(lines[j:end]), re.I))))
        return out


def page_blocks(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = lines[i].lstrip()
        if not fence.startswith("```"):
            i += 1
            continue
        indent, lang = len(lines[i]) - len(fence), fence[3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```"))
        body = "\n".join(line[indent:] for line in lines[i + 1:end])
        marker = MARKER.match(lines[i - 1].strip()) if i else None
        page = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        block = Block(page, i + 1, body, marker["kind"] if marker else "",
                      marker["value"] if marker else "")
        if lang in SHELL or (lang == "" and block.transcript):
            out.append(block)
        i = end + 1
    return out


def pages():
    """The README, the hand-written docs pages in the site's order, then the benchmark pages."""
    from ruamel.yaml import YAML

    nav = YAML(typ="safe", pure=True).load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def walk(entries):
        for entry in entries:
            for value in entry.values():
                yield from walk(value) if isinstance(value, list) else [value]

    # benchmarks.md is BENCHMARKS.md; the reference pages are generated (stages.md's blocks are dvc.yaml's
    # commands, which every `dvc repro` runs).
    docs = [ROOT / "docs" / page for page in walk(nav) if page != "benchmarks.md" and not page.startswith("reference/")]
    return [ROOT / "README.md", *docs, ROOT / "bench" / "README.md", ROOT / "BENCHMARKS.md"]


def all_blocks():
    return [block for page in pages() for block in page_blocks(page)]


def main():
    for block in all_blocks():
        how = {"": "run", "serves": f"run, serving {block.value}", "not run": f"not run: {block.value}"}[block.marker]
        print(f"{block.page}:{block.line}  {how}  |  {block.first_command()}")


if __name__ == "__main__":
    sys.exit(main())
