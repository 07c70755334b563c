"""The `nerpipe` command: tools around the pipeline (the pipeline itself runs with `dvc repro`).

    nerpipe --help
"""

import argparse
import importlib

# name -> module with `add_arguments(parser)` and `run(args)`; each command lives in its own module.
COMMANDS = {
    "set-params": ("nerpipe.core.set_params", "set keys in params.yaml, refusing keys that do not exist"),
    "pr-report": ("nerpipe.report.pr_report", "Markdown comparing two revisions: metrics with deltas, params, plots"),
    "compare": ("nerpipe.report.compare", "is a difference real? paired bootstrap of two runs' F1; seed groups"),
    "predict": ("nerpipe.predict.command", "tag raw text with the trained model: entities with offsets, type, score"),
    "serve": ("nerpipe.predict.serve_command", "serve the logged MLflow model over HTTP, batching concurrent requests "
                                               "(mosec on one machine, Ray Serve on a cluster)"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nerpipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
