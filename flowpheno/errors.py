"""User-facing errors (one line that names the file, row or ID and the fix) and warnings."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PASSED_THROUGH = (_PACKAGE, os.path.abspath(contextlib.__file__))


class FlowphenoError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits 1.

    The message names the file, row or ID and the fix, on one line (no newline), e.g.
    ``pheno.tsv: line 7 has 3 fields but the header has 4 (tab-separated); fix that line``.
    """


class OptionError(FlowphenoError, ValueError):
    """An option value outside its allowed range or set: a usage error (the CLI exits 2).

    ``setting`` (a field of ``FitConfig``/``TrainConfig``), ``value`` and ``rule`` (which may name
    other settings as ``{field}``) let the CLI and the workflow word the message with their own
    names for the settings (:func:`flowpheno.config.worded`); ``setting`` is None for a message
    that is already final.
    """

    exit_code = 2

    def __init__(self, message: str, *, setting: str | None = None, value: Any = None, rule: str = "") -> None:
        super().__init__(message)
        self.setting, self.value, self.rule = setting, value, rule


def caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning raised by the function calling this one
    to the first frame outside flowpheno (the user's script, notebook cell or test), as
    Python 3.12's ``warnings.warn(skip_file_prefixes=...)`` does; ``contextlib`` frames
    (the ``with`` blocks flowpheno opens) are passed through too."""
    frame = sys._getframe(2)  # the caller of the function that called this one
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PASSED_THROUGH):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message)`` pointing at the code that called flowpheno, not at the
    flowpheno line that noticed the problem. One line: ``message`` must hold no newline."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())
