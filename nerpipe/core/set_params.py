"""Set keys in params.yaml, keeping its comments, and validate the result before writing it.

    python -m nerpipe.core.set_params data.source=/path/to/conll2003 model.name=/path/to/model

What `make repro DATA=... MODEL=...` calls. Unlike `dvc exp run -S`, it refuses keys that do not
exist. Values are read as YAML 1.2 scalars (3e-5 is a float, true a bool).
"""

import argparse
import io
import sys
from pathlib import Path

from ruamel.yaml import YAML

from nerpipe.core.atomic import write_text
from nerpipe.core.errors import UserError, exit_on_user_error
from nerpipe.core.params import parse_params


def set_params(path, assignments):
    path = Path(path)
    yaml = YAML()  # round-trip mode keeps comments and key order
    doc = yaml.load(path.read_text(encoding="utf-8"))
    for assignment in assignments:
        key, sep, raw_value = assignment.partition("=")
        if not sep:
            raise UserError(f"{assignment!r}: expected KEY=VALUE, e.g. model.name=/path/to/model")
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise UserError(f"{path}: no key {key!r} to set")
        node[leaf] = YAML(typ="safe", pure=True).load(raw_value) if raw_value else ""
    parse_params(doc, source=str(path))
    out = io.StringIO()
    yaml.dump(doc, out)
    write_text(path, out.getvalue())


def add_arguments(parser):
    parser.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))


def run(args):
    with exit_on_user_error():
        set_params(args.params, args.assignments)
    print(f"{args.params}: set {', '.join(args.assignments)}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
