"""Stage `check_params`: validate the whole params.yaml, so a typo fails at once.

    python stages/check_params.py params.yaml

DVC re-runs a stage only when a key it declares changes. `dvc exp run -S lrr=3e-5` *adds* a key
no stage declares, so without this stage nothing would run and the typo would pass silently. This
stage depends on the whole file; it takes well under a second and writes nothing.
"""

import argparse
from pathlib import Path

from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import load_params


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", type=Path, nargs="?", default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        load_params(args.params)
    print(f"{args.params}: ok")


if __name__ == "__main__":
    main()
