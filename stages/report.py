"""Stage `report`: reports/report.md with the headline table, learning curve, confusion matrix and the
most frequent error kinds with example sentences.

    python stages/report.py --train reports/train --eval reports/eval --timings reports/timings \
        --out reports/report.md --figures reports/figures

report.md holds no wall times (they differ on every run): the stages' timings files in reports/timings/,
which are not deps (dvc.yaml says why), go to MLflow only. The work is nerpipe/report/run.py's.
"""

import argparse
from pathlib import Path

from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import load_params
from nerpipe.report.run import ReportPaths, write_report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="train stage reports directory")
    parser.add_argument("--eval", type=Path, required=True, help="evaluate stage output directory")
    parser.add_argument("--timings", type=Path, required=True, help="directory of the stages' timings files")
    parser.add_argument("--out", type=Path, required=True, help="report.md to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="for train.method")
    parser.add_argument("--figures", type=Path, required=True, help="directory for the PNG figures")
    args = parser.parse_args()
    with exit_on_user_error():
        write_report(load_params(args.params), ReportPaths(args.train, args.eval, args.timings, args.out,
                                                           args.figures))
    print(f"wrote {args.out} and figures in {args.figures}")


if __name__ == "__main__":
    main()
