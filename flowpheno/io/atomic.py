"""Safe outputs: checked before any work, written under a temporary name, renamed when complete.

Rules every command follows for its ``--out``:

- an output never is, contains or lies inside an input (resolved paths compared);
- a run folder replaces only a folder flowpheno wrote (it holds the manifest
  :data:`MANIFEST`, listing every file of the run), and only when the caller allows it
  (``--overwrite``); an empty folder is fine, any other folder is refused;
- the current folder (or one of its ancestors) is never a run folder;
- whether the target can be written is proven at the start, by creating the temporary
  folder (or a probe) beside it, so a bad ``--out`` fails before reading or training;
- errors of the operating system while writing (no space, no permission, read-only file
  system) become one :class:`~flowpheno.errors.FlowphenoError` line naming the path;
- temporary names carry the writer's host and process id (``.NAME.HOST-PID.XXXXXXXX.tmp``):
  leftovers of processes that have ended are removed on the next write of that target,
  with one warning line giving their size.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import Any

from flowpheno.errors import FlowphenoError, warn

MANIFEST = ".flowpheno-run"
"""File in every run folder flowpheno writes: JSON with the command and the files written."""

_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full: free some space or choose another {option}",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another {option}",
    errno.EFBIG: "the file is too large for this file system: choose another {option}",
    errno.EACCES: "permission denied: choose a folder you can write to as {option}",
    errno.EPERM: "operation not permitted: choose a folder you can write to as {option}",
    errno.EROFS: "the file system is read-only: choose a writable folder as {option}",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another {option}",
    errno.EISDIR: "it is a folder: give a file name as {option}",
}

Inputs = Mapping[str, Iterable[str | Path] | str | Path | None]
"""Input paths by the option that named them, e.g. ``{"--pheno": "pheno.tsv"}``."""


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def _tag() -> str:
    """``HOST-PID`` of this process, put in every temporary name it creates."""
    return f"{_host()}-{os.getpid()}"


def _prefix(target: Path) -> str:
    return f".{target.name}.{_tag()}."


class OutputError(FlowphenoError, OSError):
    """An output could not be written (full disk, no permission): a FlowphenoError for the
    CLI's one line, and still an OSError for callers that treat failed writes as optional."""


_OUTER: ContextVar[tuple[Path, str] | None] = ContextVar("flowpheno_output", default=None)


@contextmanager
def write_errors(target: str | Path, option: str = "--out") -> Iterator[None]:
    """Turn an operating-system error while writing ``target`` into one FlowphenoError line.

    Handles ENOSPC, EDQUOT, EFBIG, EACCES, EPERM, EROFS, ENOTDIR and EISDIR; an error
    about a file outside the target's folder (e.g. an input being read) is left as it is.
    Nested uses (a file written inside a run folder being written) name the outermost target.
    """
    outer = _OUTER.get()
    if outer is not None:
        target, option = outer
    token = _OUTER.set((Path(target), option))
    try:
        yield
    except OSError as error:
        reason = _WRITE_ERRORS.get(error.errno or -1)
        named = getattr(error, "filename", None)
        folder = str(Path(os.path.abspath(target)).parent)
        ours = named is None or os.path.abspath(named).startswith(folder)
        if reason is None or not ours:
            raise
        raise OutputError(f"cannot write {option} {target}: {reason.format(option=option)}") from None
    finally:
        _OUTER.reset(token)


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum((Path(root) / name).lstat().st_size for root, _, files in os.walk(path) for name in files)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_leftovers(target: str | Path) -> list[Path]:
    """Remove temporary files/folders beside ``target`` left by flowpheno processes that ended.

    A leftover is ``.NAME.HOST-PID.*.tmp``: removed when HOST is this machine and process
    PID no longer exists (one warning line with the size); one of a live process or of
    another host is left alone and reported. Older leftovers without a process id
    (``.NAME.XXXXXXXX.tmp``, ``.NAME.old``) are only reported. Returns the removed paths.
    """
    target = Path(os.path.abspath(target))
    parent = target.parent
    if not parent.is_dir():
        return []
    start = f".{target.name}."
    removed: list[Path] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if name == f".{target.name}.old":
            warn(f"{entry} may hold an earlier copy of {target} left by an interrupted run; check it, then delete it")
            continue
        if not (name.startswith(start) and name.endswith(".tmp")):
            continue
        middle = name[len(start) : -len(".tmp")]
        match = re.fullmatch(r"(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)(\.[A-Za-z0-9_.]+)?", middle)
        if match is None:
            if re.fullmatch(r"[a-z0-9_]{8}", middle):
                warn(
                    f"{entry} ({_size(entry) / 1e6:.1f} MB) is a leftover of an interrupted run; "
                    "delete it if no flowpheno run is writing there"
                )
            continue
        host, pid = match["host"], int(match["pid"])
        if host != _host():
            warn(f"{entry} is being written, or was left, by flowpheno process {pid} on {host}; left as it is")
        elif pid == os.getpid():
            continue
        elif _alive(pid):
            warn(f"{entry} is being written by process {pid}, still running; left as it is")
        else:
            size = _size(entry)
            try:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            except OSError as error:
                warn(f"could not remove {entry}, a leftover of an interrupted run: {error.strerror}")
                continue
            removed.append(entry)
            warn(
                f"removed {entry} ({size / 1e6:.1f} MB), left by an interrupted flowpheno run (process {pid} has ended)"
            )
    return removed


def _input_paths(inputs: Inputs) -> list[tuple[str, Path]]:
    pairs: list[tuple[str, Path]] = []
    for option, paths in inputs.items():
        if paths is None:
            continue
        for path in [paths] if isinstance(paths, (str, Path)) else paths:
            if path is not None and str(path) != "":
                pairs.append((option, Path(path)))
    return pairs


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_under_file(out: Path, option: str) -> None:
    for ancestor in Path(os.path.abspath(out)).parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise FlowphenoError(
                    f"{option} {out}: {ancestor} is a file, not a folder; choose an {option} outside it"
                )
            return


def check_disjoint(out: str | Path, inputs: Inputs, option: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (resolved paths).

    Raises FlowphenoError naming the output, the input and the option that gave it.
    """
    out = Path(out)
    resolved = out.resolve()
    for name, path in _input_paths(inputs):
        source = path.resolve()
        if _same(out, path):
            raise FlowphenoError(
                f"{option} {out} is the {name} input {path}: writing there would destroy it; choose another {option}"
            )
        if resolved in source.parents:
            raise FlowphenoError(f"{option} {out} contains the {name} input {path}: choose a new folder for {option}")
        if source in resolved.parents and source.is_dir():
            raise FlowphenoError(f"{option} {out} lies inside the {name} folder {path}: choose an {option} outside it")


def _probe(directory: Path, target: Path, option: str) -> None:
    """Prove ``directory`` (an existing folder) is writable by creating and removing a folder in it."""
    with write_errors(target, option):
        os.rmdir(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=directory))


def check_file_output(
    out: str | Path, inputs: Inputs | None = None, option: str = "--out", overwrite: bool = False
) -> Path:
    """Check a single-file output before any work: not an input, not inside an input folder,
    not an existing folder, not under a file, not an existing file unless ``overwrite``
    (it may be the user's own), and its folder (or nearest existing ancestor) writable.
    Cleans leftovers of ended runs beside it. Creates nothing. Returns ``out``.

    Raises:
        FlowphenoError: naming ``option`` and the path, for each case refused above.
    """
    out = Path(out)
    _check_not_under_file(out, option)
    if out.is_dir():
        raise FlowphenoError(f"{option} {out} is a folder; give a file name, e.g. {out / 'output.tsv'}")
    check_disjoint(out, inputs or {}, option)
    if out.exists() and not overwrite:
        raise FlowphenoError(f"{option} {out} exists; pass --overwrite to replace it, or choose another name")
    existing = next(a for a in Path(os.path.abspath(out)).parents if a.exists())
    _probe(existing, out, option)
    clean_leftovers(out)
    return out


def check_folder_output(out: str | Path, inputs: Inputs | None = None, option: str = "--out-dir") -> Path:
    """Check a folder that files are written into (nothing in it is removed): not a file, not
    under a file, not an input, and writable. Creates nothing. Returns ``out``.

    Raises:
        FlowphenoError: naming ``option`` and the path, for each case refused above.
    """
    out = Path(out)
    _check_not_under_file(out, option)
    if out.exists() and not out.is_dir():
        raise FlowphenoError(f"{option} {out} is an existing file; a folder is wanted: choose a new path")
    for name, path in _input_paths(inputs or {}):
        if _same(out, path):
            raise FlowphenoError(f"{option} {out} is the {name} input {path}: choose another {option}")
    existing = next(a for a in [Path(os.path.abspath(out)), *Path(os.path.abspath(out)).parents] if a.exists())
    _probe(existing, out, option)
    return out


def check_no_clobber(paths: Iterable[str | Path], overwrite: bool, option: str = "--out-dir") -> None:
    """Refuse to replace an existing file among ``paths`` unless ``overwrite``: files written
    into a folder the user named may be the user's own (a hand-written ``report.md``).

    Raises:
        FlowphenoError: naming the first existing file and ``--overwrite``.
    """
    if overwrite:
        return
    existing = [Path(path) for path in paths if Path(path).exists()]
    if existing:
        raise FlowphenoError(
            f"{option}: {existing[0]} exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
            "pass --overwrite to replace it, or choose another folder"
        )


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _files(folder: Path) -> list[str]:
    """Every entry under ``folder`` (files, and folders with nothing in them), relative, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        found += [str(relative / name) for name in files]
        if not dirs and not files and relative != Path("."):
            found.append(str(relative))
    return sorted(found)


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _foreign(folder: Path, legacy: Iterable[str]) -> list[str] | None:
    """What in ``folder`` flowpheno did not write; None when nothing marks it as flowpheno's.

    A folder is flowpheno's when it holds :data:`MANIFEST` (its files are those listed), or,
    written before the manifest existed, when it holds the first of ``legacy`` and only
    names from ``legacy``.
    """
    entries = _files(folder)
    manifest = _manifest(folder)
    if manifest is not None:
        if manifest.get("files") is None:  # a folder that is filled over several calls (resumable)
            return []
        listed = set(manifest["files"]) | {MANIFEST}
        return [name for name in entries if name not in listed]
    legacy = list(legacy)
    if legacy and (folder / legacy[0]).is_file():
        allowed = set(legacy)
        return [name for name in entries if name not in allowed]
    return None


def _check_place(out: Path, inputs: Inputs, option: str) -> None:
    """Where a run folder may go: not under a file, not the current folder or above it, not an
    input or a folder holding one, not an existing file or link."""
    _check_not_under_file(out, option)
    resolved = out.resolve()
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise FlowphenoError(
            f"{option} {out} is the current folder or holds it; name a new folder, e.g. {option} {out / 'run'}"
        )
    check_disjoint(out, inputs, option)
    if out.is_symlink():
        raise FlowphenoError(f"{option} {out} is a symbolic link; give the path of a real folder")
    if out.exists() and not out.is_dir():
        raise FlowphenoError(f"{option} {out} is an existing file; a folder is wanted: choose a new path")


def _check_run_folder(
    out: Path, inputs: Inputs, overwrite: bool, legacy: Iterable[str], option: str, command: str | None = None
) -> None:
    _check_place(out, inputs, option)
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = _manifest(out)
    if command is not None and manifest is not None and manifest.get("command") not in (None, command):
        raise FlowphenoError(
            f"{option} {out} holds the output of flowpheno {manifest.get('command')}, not of flowpheno {command}; "
            f"choose another {option} (--overwrite replaces only this command's own earlier output)"
        )
    foreign = _foreign(out, legacy)
    if foreign is None:
        listing = sorted(p.name for p in out.iterdir())
        raise FlowphenoError(
            f"{option} {out} is a folder flowpheno did not write (it "
            f"holds {_describe(listing)}); choose a new or empty folder"
        )
    if foreign:
        raise FlowphenoError(
            f"{option} {out} holds an earlier flowpheno run and also {_describe(foreign)}, which flowpheno did not "
            f"write; move those out or choose another {option}"
        )
    if not overwrite:
        raise FlowphenoError(
            f"{option} {out} holds an earlier flowpheno run; pass --overwrite to replace it, or choose another {option}"
        )


class StagedDirectory:
    """A run folder being written: checked and created (as a temporary folder beside the
    target) before any work, renamed onto the target by :meth:`commit`.

    Use it as a context manager: leaving the block without :meth:`commit` (an error, an
    interruption) removes the temporary folder and any parent folder it created.
    """

    def __init__(
        self,
        target: str | Path,
        command: str,
        inputs: Inputs | None = None,
        overwrite: bool = False,
        legacy: Iterable[str] = (),
        option: str = "--out",
    ) -> None:
        self.target = Path(target)
        self.command, self.overwrite, self.legacy, self.option = command, overwrite, tuple(legacy), option
        self.inputs: Inputs = inputs or {}
        self.committed = False
        _check_run_folder(self.target, self.inputs, overwrite, self.legacy, option, command)
        clean_leftovers(self.target)
        absolute = Path(os.path.abspath(self.target))
        self._created = [p for p in reversed(absolute.parents) if not p.exists()]
        with write_errors(self.target, option):
            absolute.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.path = Path(tempfile.mkdtemp(prefix=_prefix(self.target), suffix=".tmp", dir=absolute.parent))
            except BaseException:
                self._remove_created()
                raise
            try:
                self._write_manifest(None)  # proves a file can be written there (not only a name created)
            except BaseException:
                self.discard()
                raise

    def _write_manifest(self, files: list[str] | None) -> None:
        from flowpheno import __version__

        record = {"written_by": f"flowpheno {__version__}", "command": self.command, "files": files}
        (self.path / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break

    def discard(self) -> None:
        """Remove the temporary folder (and parent folders created for it)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if not self.committed:
            self._remove_created()

    def commit(self) -> Path:
        """List the files in the manifest and rename the temporary folder onto the target.

        The target is checked again (it may have changed while the run worked); an
        earlier run is moved aside, replaced, then removed. Returns the target.
        """
        with write_errors(self.target, self.option):
            self._write_manifest([name for name in _files(self.path) if name != MANIFEST])
            os.chmod(self.path, 0o777 & ~_umask())
            _check_run_folder(self.target, self.inputs, self.overwrite, self.legacy, self.option, self.command)
            if self.target.is_dir() and any(self.target.iterdir()):
                backup = Path(tempfile.mkdtemp(prefix=_prefix(self.target), suffix=".old.tmp", dir=self.path.parent))
                os.replace(self.target, backup)  # rename over the empty folder just made
                try:
                    os.replace(self.path, self.target)
                except BaseException:
                    os.replace(backup, self.target)
                    raise
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.replace(self.path, self.target)  # a new name, or rename over an empty folder
        self.committed = True
        return self.target

    def __enter__(self) -> StagedDirectory:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self.committed:
            self.discard()


def results_folder(
    out: str | Path,
    command: str,
    inputs: Inputs | None = None,
    legacy: Iterable[str] = (),
    option: str = "--out",
    legacy_contents: dict[str, str] | None = None,
) -> Path:
    """Check and create a folder that a resumable command fills over several calls.

    Accepted: a new or empty folder, or one this command wrote (its manifest; or, written
    before manifests, the first of ``legacy`` and only names matching the ``legacy``
    patterns, besides hidden ``.tmp`` leftovers; a subfolder named in ``legacy_contents``
    must hold only names matching its pattern). Nothing in it is removed. The manifest
    is written on first use. Returns ``out``.

    Raises:
        FlowphenoError: a folder of another command, or one flowpheno did not write.
    """
    out = Path(out)
    legacy = tuple(legacy)
    _check_place(out, inputs or {}, option)
    manifest = _manifest(out) if out.is_dir() else None
    if manifest is not None and manifest.get("command") != command:
        raise FlowphenoError(
            f"{option} {out} holds the output of {manifest.get('command')!r}, not of {command!r}; choose another folder"
        )
    if out.is_dir() and any(out.iterdir()) and manifest is None:
        names = sorted(p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))
        stray = [n for n in names if not any(re.fullmatch(pattern, n) for pattern in legacy)]
        for folder, pattern in (legacy_contents or {}).items():
            if (out / folder).is_dir():
                stray += [
                    f"{folder}/{p.name}"
                    for p in sorted((out / folder).iterdir())
                    if not re.fullmatch(pattern, p.name) and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                ]
        if not legacy or not (out / legacy[0]).exists() or stray:
            raise FlowphenoError(
                f"{option} {out} is a folder flowpheno did not write (it holds {_describe(stray or names)}); "
                "choose a new or empty folder"
            )
    with write_errors(out, option):
        out.mkdir(parents=True, exist_ok=True)
        if _manifest(out) is None:
            (out / MANIFEST).write_text(json.dumps({"command": command, "files": None}) + "\n")
    return out


@contextmanager
def atomic_path(target: str | Path, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The temporary name is ``.NAME.HOST-PID.XXXXXXXX.tmp``; errors of the operating system
    while writing become one FlowphenoError line naming ``target`` (:class:`OutputError`).
    An exception inside the block removes the temporary file and leaves ``target`` as it was.

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> target = Path(folder.name) / "table.tsv"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("FID\\tIID\\n")
        ...     target.exists()  # nothing at the target while the file is written
        False
        >>> target.read_text()
        'FID\\tIID\\n'
        >>> folder.cleanup()
    """
    target = Path(target)
    with write_errors(target, option):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(handle)
        try:
            yield Path(temporary)
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


@contextmanager
def atomic_directory(
    target: str | Path,
    command: str = "flowpheno",
    inputs: Inputs | None = None,
    overwrite: bool = False,
    legacy: Iterable[str] = (),
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``.

    ``target`` is checked first (see :class:`StagedDirectory`): an earlier flowpheno run
    is replaced only with ``overwrite``, any other non-empty folder is refused.
    """
    with StagedDirectory(target, command, inputs, overwrite, legacy) as staged:
        yield staged.path
        staged.commit()
