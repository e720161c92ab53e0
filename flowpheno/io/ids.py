"""Sample identity: PLINK identifies an individual by the pair (FID, IID).

Every join between files (phenotypes, covariates, kinship, ``.fam``) goes through
:func:`align`: on (FID, IID) when both files carry FIDs, on IID alone when one of them
has none (and then IIDs must be unique in the other file). IDs are text, compared
exactly: ``000001`` is not ``1``, and ``NA`` or ``-9`` are IDs like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError

FID_GIVEN = "flowpheno_fid_given"
"""``DataFrame.attrs`` key: False when a table's FID column was filled from IID."""


@dataclass
class SampleKeys:
    """The individuals of one file, in file order.

    ``iid``: ``(n,)`` text IDs; ``fid``: ``(n,)`` text family IDs, or None when the file
    has no FID; ``lines``: ``(n,)`` 1-based line numbers for messages (None when the
    file has no lines, e.g. an ``.npz``); ``source``: the file, as messages name it.
    """

    iid: np.ndarray
    fid: np.ndarray | None
    source: str
    lines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.iid)

    def describe(self, row: int) -> str:
        """``FID 'f' IID 'a'`` (or ``IID 'a'``) of row ``row``, IDs formatted with ``str()``."""
        iid = f"IID {str(self.iid[row])!r}"
        return iid if self.fid is None else f"FID {str(self.fid[row])!r} {iid}"

    def where(self, row: int) -> str:
        """``line 5`` or ``row 5`` (1-based) of ``row``."""
        return f"line {int(self.lines[row])}" if self.lines is not None else f"row {row + 1}"


def sample_keys(
    table: pd.DataFrame, source: str, lines: np.ndarray | None = None, fid: bool | None = None
) -> SampleKeys:
    """Keys of a table with ``FID`` and ``IID`` columns (text).

    ``fid=None`` reads whether the FID column came from the file from
    ``table.attrs`` (set by :func:`flowpheno.io.tables.read_table`; a table without
    that mark is taken to carry real FIDs). Duplicated keys raise :class:`FlowphenoError`
    naming the pair and both lines.
    """
    if fid is None:
        fid = bool(table.attrs.get(FID_GIVEN, True))
    iid = table["IID"].astype(str).to_numpy()
    fids = table["FID"].astype(str).to_numpy() if fid and "FID" in table.columns else None
    keys = SampleKeys(iid, fids, str(source), None if lines is None else np.asarray(lines))
    check_unique(keys)
    return keys


def make_keys(iid: np.ndarray, fid: np.ndarray | None, source: str, lines: np.ndarray | None = None) -> SampleKeys:
    """Keys from ID arrays (text), checked for duplicates.

    ``iid``: ``(n,)``; ``fid``: ``(n,)`` or None (the file has no FID); ``lines``: ``(n,)``
    1-based line numbers or None. Raises :class:`FlowphenoError` (:func:`check_unique`).
    Example: :func:`align`.
    """
    keys = SampleKeys(_text(iid), None if fid is None else _text(fid), str(source), lines)
    check_unique(keys)
    return keys


def _text(values: np.ndarray) -> np.ndarray:
    """IDs as a ``str`` array (each value through ``str()``)."""
    return np.array([str(value) for value in values], dtype=str) if len(values) else np.array([], dtype=str)


def _index(keys: SampleKeys, by_pair: bool) -> pd.Index:
    if by_pair:
        assert keys.fid is not None
        return pd.MultiIndex.from_arrays([keys.fid, keys.iid])
    return pd.Index(keys.iid)


def check_unique(keys: SampleKeys) -> None:
    """Refuse a file that lists one individual twice: name the pair and where."""
    index = _index(keys, keys.fid is not None)
    duplicated = index.duplicated(keep=False)
    if not duplicated.any():
        return
    first = int(np.flatnonzero(duplicated)[0])
    same = keys.iid == keys.iid[first]
    if keys.fid is not None:
        same &= keys.fid == keys.fid[first]
    same = np.flatnonzero(same)
    places = ", ".join(str(int(keys.lines[i])) if keys.lines is not None else str(i + 1) for i in same)
    label = "lines" if keys.lines is not None else "rows"
    if keys.source.endswith(".fam"):  # each line is a column of the .bed: deleting one misaligns every genotype
        fix = (
            "each .fam line is a column of the .bed, so do not delete a line: write a copy of the .fam that gives "
            f"the repeats distinct IIDs, make a new fileset from it (plink1.9 --bed {keys.source[:-4]}.bed --bim "
            f"{keys.source[:-4]}.bim --fam COPY.fam --make-bed --out NEW), then drop a true duplicate with "
            "plink1.9 --remove"
        )
    elif keys.fid is not None:
        fix = "keep one row per individual"
    else:
        fix = (
            "if these are different individuals of different families, add a FID column (PLINK identifies an "
            "individual by FID and IID); if they are one individual, keep one row"
        )
    raise FlowphenoError(f"{keys.source}: {keys.describe(first)} appears more than once ({label} {places}); {fix}")


@dataclass
class Alignment:
    """Where each target row's individual sits in the data file.

    ``positions``: ``(n_target,)`` row of the data file for each target row, -1 where
    absent; ``by``: ``"FID and IID"`` or ``"IID"``.
    """

    positions: np.ndarray
    by: str

    @property
    def found(self) -> np.ndarray:
        """``(n_target,)`` boolean: the target row has a match."""
        return self.positions >= 0

    @property
    def matched(self) -> int:
        return int(self.found.sum())

    def take(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows of ``frame`` (data file order) in target order; all-NaN rows where absent."""
        return frame.reset_index(drop=True).reindex(np.where(self.found, self.positions, -1)).reset_index(drop=True)


def _first(keys: SampleKeys) -> str:
    return keys.describe(0) if len(keys) else "no individual"


def align(data: SampleKeys, target: SampleKeys, hint: str = "") -> Alignment:
    """Match ``target``'s individuals to rows of ``data`` (the file whose values are taken).

    On (FID, IID) when both files carry FIDs; on IID alone when either has none, and
    then an IID repeated in the other file (several families) is an error naming it
    and its families. No individual in common is an error showing both files' first
    IDs, followed by ``hint``. Returns an :class:`Alignment` (positions into ``data``).

    Raises:
        FlowphenoError: an ambiguous IID (matched on IID alone), or no individual in common.

    Example:
        >>> pheno = make_keys(np.array(["a", "b", "c"]), None, "pheno.tsv")  # no FID column
        >>> fam = make_keys(np.array(["c", "a", "x"]), np.array(["f1", "f1", "f2"]), "cohort.fam")
        >>> alignment = align(pheno, fam)  # the .fam's individuals, found in pheno.tsv
        >>> alignment.positions, alignment.by, alignment.matched
        (array([ 2,  0, -1]), 'IID', 2)
        >>> alignment.take(pd.DataFrame({"height": [1.71, 1.80, 1.64]}))
           height
        0    1.64
        1    1.71
        2     NaN
    """
    by_pair = data.fid is not None and target.fid is not None
    if not by_pair:
        for keys in (data, target):
            if keys.fid is None:
                continue
            repeated = pd.Index(keys.iid).duplicated(keep=False)
            if repeated.any():
                iid = str(keys.iid[repeated][0])
                families = ", ".join(dict.fromkeys(str(f) for f in keys.fid[keys.iid == iid]))
                other = target if keys is data else data
                raise FlowphenoError(
                    f"{keys.source}: IID {iid!r} is used in several families ({families}) but {other.source} has no "
                    f"FID column to tell them apart; add FID to {other.source}"
                )
    positions = _index(data, by_pair).get_indexer(_index(target, by_pair))
    alignment = Alignment(np.asarray(positions, dtype=np.int64), "FID and IID" if by_pair else "IID")
    if alignment.matched == 0 and len(target):
        shared = "no (FID, IID) pair" if by_pair else "no IID"
        raise FlowphenoError(
            f"{target.source} and {data.source} share {shared} (first: {_first(target)} vs {_first(data)})"
            + (f"; {hint}" if hint else "")
        )
    return alignment
