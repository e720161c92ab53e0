"""How every benchmark records its results: the ``flowpheno bench`` experiments and the
scripts under ``benchmarks/`` alike.

A result is a JSON file (the numbers, with the command and :func:`package_versions`) and a
Markdown table beside it, written by :func:`write_results` (each file atomically: a reader never
sees half a file). :func:`command_line` gives the command as it was typed, for both files;
:func:`script` makes a ``benchmarks/*.py`` script a Typer command, like ``flowpheno bench``.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flowpheno.io.atomic import atomic_path, write_errors
from flowpheno.versions import package_versions

__all__ = ["command_line", "package_versions", "script", "write_results"]


def command_line(program: str, argv: list[str] | None = None, skip: int = 1) -> str:
    """``program`` followed by the arguments of ``argv`` (default ``sys.argv``) after the first
    ``skip`` (the program's own words): ``command_line("flowpheno bench stocks", skip=3)``,
    ``command_line("python benchmarks/threads.py")``. Each argument is quoted for a POSIX shell
    where it needs it, so the line reruns as written.

    Example:
        >>> command_line("flowpheno bench stocks", ["flowpheno", "bench", "stocks", "--out", "my runs"], skip=3)
        "flowpheno bench stocks --out 'my runs'"
    """
    arguments = (sys.argv if argv is None else argv)[skip:]
    return " ".join([program, *map(shlex.quote, map(str, arguments))])


def write_results(
    folder: str | Path, files: Mapping[str, Any], indent: int = 2, default: Callable[[Any], Any] | None = None
) -> list[Path]:
    """Write each of ``files`` (name -> content) into ``folder`` (created if needed): a ``str``
    as it is (a Markdown table), anything else as JSON (``indent``; ``default`` for values JSON
    lacks). Each file is written under a temporary name and renamed into place. Returns the paths.

    Raises:
        FlowphenoError: the folder cannot be written (full disk, no permission).
    """
    folder = Path(folder)
    written = []
    with write_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            text = content if isinstance(content, str) else json.dumps(content, indent=indent, default=default)
            with atomic_path(folder / name) as tmp:
                tmp.write_text(text)
            written.append(folder / name)
    return written


def script(main: Callable[..., Any], doc: str | None = None) -> None:
    """Run ``main`` as the command line of a ``benchmarks/*.py`` script: its parameters are
    Typer options (as in ``flowpheno bench``), ``doc`` (the script's module docstring) its
    ``--help``. A :class:`~flowpheno.errors.FlowphenoError` ends it with one line and exit code 1."""
    import typer

    from flowpheno.errors import FlowphenoError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command(help=_unwrapped_examples(doc or main.__doc__ or ""))(main)
    try:
        app()
    except FlowphenoError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def _unwrapped_examples(doc: str) -> str:
    """``doc`` with click's no-rewrap mark (``\\b``) before each paragraph of indented lines
    (the command examples), so ``--help`` shows them one per line."""
    paragraphs = doc.split("\n\n")
    return "\n\n".join("\b\n" + p if any(line.startswith("    ") for line in p.splitlines()) else p for p in paragraphs)
