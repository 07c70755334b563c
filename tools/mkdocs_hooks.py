"""mkdocs hooks (mkdocs.yml `hooks:`): pages of the site that are files outside docs/.

docs/benchmarks.md is one line naming BENCHMARKS.md at the repository root, which stays there so that it
reads on its own. Its links are written from the root (`docs/serving.md#load-benchmark`); inside the site
the same page lives in docs/, so each `](docs/...)` becomes `](...)` before mkdocs validates the links.
A link to anything else outside docs/ still fails the strict build, as it would on any page.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r"^<!-- include: (?P<path>[\w./-]+) -->\s*$", re.M)


def included(markdown):
    """The page with each `<!-- include: FILE -->` line replaced by FILE (relative to the repository root),
    its root-relative links into docs/ made relative to docs/."""
    def text(match):
        source = (ROOT / match["path"]).read_text(encoding="utf-8")
        return re.sub(r"\]\(docs/", "](", source)

    return INCLUDE.sub(text, markdown)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001  (mkdocs passes all four)
    return included(markdown)
