"""The exceptions a stage ends with on purpose: bad input a user can fix (printed without a traceback),
and a training stopped on request."""

import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (data, params, model name): the message names the file/line/key and what to do."""


@contextmanager
def exit_on_user_error():
    """Turn a UserError into a one-paragraph message on stderr and exit code 2, no traceback."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


class Interrupted(Exception):
    """Training stopped on request after writing a checkpoint; `dvc repro` resumes from it."""
