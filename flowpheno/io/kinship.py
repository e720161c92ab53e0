"""Kinship matrices from ``.npz``, GEMMA ``.cXX/.sXX.txt``, GCTA ``.grm.bin`` or PLINK files.

Also the spectral decomposition of the (training) kinship, cached on disk beside the
kinship file under a content hash, so a second ``fit`` on the same matrix skips it.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg

from flowpheno.errors import FlowphenoError, warn
from flowpheno.io.atomic import atomic_path
from flowpheno.io.ids import SampleKeys, check_unique, make_keys
from flowpheno.io.plink import centred_grm, plink_prefix, read_fam, sample_fids, standardised_genotype_factor

NEGATIVE_EIGENVALUE_TOLERANCE = 1e-6
"""Eigenvalues below ``-tol * largest`` make a kinship invalid; smaller negatives are clipped."""

NO_RELATEDNESS_TOLERANCE = 1e-6
"""A kinship whose eigenvalues all lie within ``tol * largest`` of each other is a multiple of
the identity: it carries no relatedness and ``s2`` is not identifiable."""


@dataclass
class Kinship:
    """A symmetric kinship matrix and the IDs of its rows, with where it came from.

    ``matrix``: ``(n, n)`` float64, the GRM scale (about 1 on the diagonal, 0.5 for first-degree
    relatives); ``ids``: ``(n,)`` IIDs; ``fids``: ``(n,)`` FIDs, or None when the file carries
    IIDs only; ``source``: the file, as messages name it.
    """

    matrix: np.ndarray
    ids: np.ndarray
    source: str
    fids: np.ndarray | None = None

    def keys(self) -> SampleKeys:
        """The rows' (FID, IID) keys (IID only without FIDs)."""
        return SampleKeys(
            np.asarray(self.ids, dtype=str),
            None if self.fids is None else np.asarray(self.fids, dtype=str),
            self.source,
        )

    def subset(self, ids: np.ndarray) -> np.ndarray:
        """The sub-matrix for IIDs ``ids`` (each must be present, IIDs unique), in that order."""
        return self.rows(pd.Index(self.ids).get_indexer(ids))

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The sub-matrix for row ``positions`` (from :func:`flowpheno.io.ids.align`), in that order."""
        return self.matrix[np.ix_(positions, positions)]

    def cross(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The ``len(rows) x len(columns)`` block ``K[rows][:, columns]`` (e.g. held-out x training)."""
        return self.matrix[np.ix_(rows, columns)]


@dataclass
class KinshipFactor:
    """A low-rank kinship ``K = W W^T`` kept as its factor (no ``n x n`` matrix).

    ``factor``: ``W``, ``(n, r)``; ``ids``: ``(n,)`` IIDs; ``fids``: ``(n,)`` FIDs or None;
    ``source``: the file, as messages name it.
    """

    factor: np.ndarray
    ids: np.ndarray
    source: str
    fids: np.ndarray | None = None

    def keys(self) -> SampleKeys:
        """The rows' (FID, IID) keys (IID only without FIDs)."""
        return SampleKeys(
            np.asarray(self.ids, dtype=str),
            None if self.fids is None else np.asarray(self.fids, dtype=str),
            self.source,
        )

    def subset(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``W`` for IIDs ``ids`` (each must be present), in that order."""
        return self.rows(pd.Index(self.ids).get_indexer(ids))

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows of ``W`` at ``positions``, in that order."""
        return self.factor[positions]


def read_pcs(path: str | Path) -> KinshipFactor:
    """Kinship as the correlation between individuals' principal-component vectors.

    ``path`` is a FID/IID table with PC columns (``PC1 .. PCr``, or every numeric
    column). Each individual's PC vector is centred and scaled to unit length, so
    ``K = W W^T`` is that correlation (unit diagonal, rank at most ``r``).

    Raises:
        FlowphenoError: fewer than two PC columns, a missing PC value, or an individual whose
            PC values are all equal (as :func:`flowpheno.io.tables.read_table` for the table itself).
    """
    from flowpheno.io.tables import numeric_columns, read_table, table_keys

    table = read_table(path)
    columns = [c for c in table.columns if str(c).upper().startswith("PC")] or [
        c for c in table.columns if c not in ("FID", "IID")
    ]
    if len(columns) < 2:
        raise FlowphenoError(f"{path}: need at least two PC columns (PC1, PC2, ...) besides FID and IID")
    values = numeric_columns(table, columns, path, "PC").to_numpy()
    incomplete = ~np.isfinite(values).all(axis=1)
    if incomplete.any():
        raise FlowphenoError(
            f"{path}: IID {table['IID'][incomplete].iloc[0]} has missing PC values; remove the row or impute"
        )
    centred = values - values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    if (norms == 0).any():
        raise FlowphenoError(
            f"{path}: IID {table['IID'][(norms == 0)[:, 0]].iloc[0]} "
            "has identical PC values; its correlation is undefined"
        )
    keys = table_keys(table, path)
    return KinshipFactor(centred / norms, keys.iid, str(path), keys.fid)


def read_genotype_factor(prefix: str | Path, maf: float = 0.01, max_missing: float = 0.05) -> KinshipFactor:
    """Kinship factor ``W`` (standardised genotypes / sqrt(M)) from a PLINK fileset with ``M < n`` SNPs.

    See :func:`flowpheno.io.plink.standardised_genotype_factor` (filters ``maf`` and
    ``max_missing``, and the FlowphenoError it raises). Returns ``W`` as ``(n, M)`` float32.
    """
    prefix = plink_prefix(prefix)
    factor, ids = standardised_genotype_factor(prefix, maf, max_missing)
    return KinshipFactor(factor, ids, str(prefix), sample_fids(prefix))


def _ids_from_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(IIDs, FIDs or None)`` in file order, text, from a ``.fam`` (columns 1-2 by
    position), a two-column ``FID IID`` file (GCTA ``.grm.id``, ``flowpheno grm``'s
    ``.ids``), or one IID per line. Lines starting with ``#`` are skipped."""
    if not path.exists():
        raise FlowphenoError(f"{path}: file not found")
    if path.suffix == ".fam":
        fam = read_fam(path)
        return fam["IID"].to_numpy(dtype=str), fam["FID"].to_numpy(dtype=str)
    from flowpheno.io.tables import decode_text

    rows, numbers = [], []
    for number, line in enumerate(decode_text(path).split("\n"), start=1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            rows.append(fields)
            numbers.append(number)
    widths = {len(fields) for fields in rows}
    if len(widths) > 1 or (widths and widths.pop() > 2):
        bad = next(i for i, fields in enumerate(rows) if len(fields) != len(rows[0]) or len(fields) > 2)
        raise FlowphenoError(
            f"{path}: line {numbers[bad]} has {len(rows[bad])} fields; an "
            "ID file has FID IID or one IID per line, the same on every line"
        )
    iids = np.array([fields[-1] for fields in rows], dtype=str)
    fids = np.array([fields[0] for fields in rows], dtype=str) if rows and len(rows[0]) == 2 else None
    make_keys(iids, fids, str(path), np.asarray(numbers))  # a pair listed twice is an error naming the lines
    return iids, fids


def _read_gcta(prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    ids_path = Path(prefix + ".grm.id")
    if not ids_path.exists():
        raise FlowphenoError(f"{prefix}.grm.bin: the IDs file {ids_path} is missing")
    ids, fids = _ids_from_file(ids_path)
    n = len(ids)
    values = np.fromfile(prefix + ".grm.bin", dtype=np.float32).astype(np.float64)
    if values.size != n * (n + 1) // 2:
        raise FlowphenoError(
            f"{prefix}.grm.bin: holds {values.size} values, but {n} IDs in {ids_path} need {n * (n + 1) // 2}"
        )
    matrix = np.zeros((n, n))
    rows, cols = np.tril_indices(n)
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix, ids, fids


def read_kinship(path: str | Path, ids_path: str | Path | None = None) -> Kinship:
    """Read a kinship in any supported format and check that it is square and symmetric.

    ``ids_path`` (``--grm-ids`` or a ``.fam``) gives the row order of GEMMA text matrices,
    which carry no IDs. A PLINK prefix computes the centred GRM (GEMMA ``-gk 1``, GEMMA
    manual, "Estimate Relatedness Matrix from Genotypes"). GCTA's ``.grm.bin`` holds the
    lower triangle as float32, with IDs in ``.grm.id`` (GCTA manual, "--make-grm").

    Raises:
        FlowphenoError: one line naming the file: absent, of an unknown format, IDs that do
            not match the rows, or a matrix that fails :func:`validated`.

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = Path(folder.name) / "kinship.npz"
        >>> K = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> write_npz(path, K, ids=np.array(["a", "b", "c"]), fids=np.array(["f1", "f1", "f2"]))
        >>> kinship = read_kinship(path)
        >>> kinship.ids, kinship.fids, kinship.matrix.shape
        (array(['a', 'b', 'c'], dtype='<U1'), array(['f1', 'f1', 'f2'], dtype='<U2'), (3, 3))
        >>> kinship.subset(np.array(["c", "a"]))
        array([[1., 0.],
               [0., 1.]])
        >>> folder.cleanup()
    """
    path = Path(path)
    name = str(path)
    if name.endswith(".npz"):
        if not path.exists():
            raise FlowphenoError(f"{path}: file not found")
        matrix, ids, fids = _read_npz(path)
    elif name.endswith(".grm.bin") or Path(name + ".grm.bin").exists():
        prefix = name[: -len(".grm.bin")] if name.endswith(".grm.bin") else name
        if not Path(prefix + ".grm.bin").exists():
            raise FlowphenoError(f"{path}: file not found")
        matrix, ids, fids = _read_gcta(prefix)
    elif name.endswith(".txt"):
        if not path.exists():
            raise FlowphenoError(f"{path}: file not found")
        if ids_path is None and Path(name + ".ids").is_file():
            ids_path = name + ".ids"  # written beside it by flowpheno grm --out NAME.txt
        if ids_path is None:
            raise FlowphenoError(
                f"{path}: a GEMMA kinship has no IDs; give --grm-ids FILE or --fam FILE in the order GEMMA read them"
            )
        matrix = np.loadtxt(path, ndmin=2)
        ids, fids = _ids_from_file(Path(ids_path))
        if len(ids) != matrix.shape[0]:
            raise FlowphenoError(
                f"{path}: {matrix.shape[0]} rows but {ids_path} lists {len(ids)} IDs; use the .fam GEMMA read"
            )
    elif any(Path(name + s).exists() for s in (".bed", ".bim", ".fam")) or path.suffix in {".bed", ".bim", ".fam"}:
        prefix = plink_prefix(path)
        matrix, ids, _ = centred_grm(prefix)
        fids = sample_fids(prefix)
    else:
        raise FlowphenoError(
            f"{path}: not a kinship file (.npz, GEMMA .cXX.txt/.sXX.txt, GCTA .grm.bin) or PLINK prefix"
        )
    return validated(
        Kinship(matrix, np.asarray(ids, dtype=str), name, None if fids is None else np.asarray(fids, dtype=str))
    )


NPZ_IDS_HINT = "np.savez(f, K=K, ids=fam.IID.astype(str).to_numpy(), fids=fam.FID.astype(str).to_numpy())"


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``K``, ``ids`` (IIDs) and optional ``fids`` of a kinship ``.npz``; never unpickles.

    Older files with ``ids`` only are matched on IID alone.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "K" not in archive or "ids" not in archive:
                raise FlowphenoError(
                    f"{path}: .npz kinship needs arrays 'K' and 'ids' (found: {', '.join(archive.files)})"
                )
            arrays = {}
            for key in ("K", "ids", "fids"):
                if key not in archive:
                    continue
                try:
                    arrays[key] = archive[key]
                except ValueError as error:
                    if "allow_pickle" not in str(error) and "Object arrays" not in str(error):
                        raise
                    raise FlowphenoError(
                        f"{path}: array {key!r} holds Python objects, which flowpheno does not unpickle; "
                        f"save IDs as text: {NPZ_IDS_HINT}"
                    ) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise FlowphenoError(
            f"{path}: cannot read as .npz ({type(error).__name__}: {error}); write it with np.savez"
        ) from None
    try:
        matrix = arrays["K"].astype(np.float64)
    except (TypeError, ValueError):
        raise FlowphenoError(f"{path}: array 'K' is not numeric ({arrays['K'].dtype})") from None
    ids = _id_array(arrays["ids"], path, "ids")
    fids = _id_array(arrays["fids"], path, "fids") if "fids" in arrays else None
    if fids is not None and len(fids) != len(ids):
        raise FlowphenoError(f"{path}: 'fids' has {len(fids)} entries but 'ids' has {len(ids)}; save one FID per IID")
    return matrix, ids, fids


def _id_array(values: np.ndarray, path: Path, key: str) -> np.ndarray:
    if values.ndim != 1:
        raise FlowphenoError(
            f"{path}: {key!r} must be one-dimensional (shape {values.shape}); save IIDs in 'ids' and FIDs in 'fids'"
        )
    if values.dtype.kind == "f":
        raise FlowphenoError(f"{path}: {key!r} holds floating-point numbers, not IDs; {NPZ_IDS_HINT}")
    return np.array([str(value) for value in values.tolist()], dtype=str) if len(values) else np.array([], dtype=str)


def validated(kinship: Kinship) -> Kinship:
    """Check shape, finiteness, symmetry and unique IDs; symmetrise round-off.

    Returns ``kinship`` with ``matrix`` replaced by ``(K + K^T) / 2``.

    Raises:
        FlowphenoError: a matrix that is not square, does not match its IDs, holds NaN or
            inf, is not symmetric (beyond ``1e-6`` relative), is all zeros, or IDs listed twice.

    Example:
        >>> validated(Kinship(np.array([[1.0, 0.2], [0.0, 1.0]]), np.array(["a", "b"]), "k.npz"))
        Traceback (most recent call last):
        ...
        flowpheno.errors.FlowphenoError: k.npz: kinship is not symmetric (K[a,b] - K[b,a] = 0.2); ...
    """
    matrix, source = kinship.matrix, kinship.source
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise FlowphenoError(f"{source}: kinship must be square, got shape {matrix.shape}")
    if len(kinship.ids) != matrix.shape[0]:
        raise FlowphenoError(f"{source}: {matrix.shape[0]} rows but {len(kinship.ids)} IDs")
    if not np.isfinite(matrix).all():
        raise FlowphenoError(f"{source}: kinship contains NaN or infinite values")
    asymmetry = np.abs(matrix - matrix.T).max()
    if asymmetry > 1e-6 * max(1.0, np.abs(matrix).max()):
        i, j = np.unravel_index(np.argmax(np.abs(matrix - matrix.T)), matrix.shape)
        raise FlowphenoError(
            f"{source}: kinship is not symmetric (K[{str(kinship.ids[i])},{str(kinship.ids[j])}] - "
            f"K[{str(kinship.ids[j])},{str(kinship.ids[i])}] = "
            f"{matrix[i, j] - matrix[j, i]:.3g}); pass the full matrix, not one triangle"
        )
    if not matrix.any():
        raise FlowphenoError(
            f"{source}: kinship is all zeros; recompute it (e.g. flowpheno grm --bfile PREFIX) or check the file"
        )
    check_unique(kinship.keys())
    kinship.matrix = (matrix + matrix.T) / 2
    return kinship


def write_npz(path: str | Path, matrix: np.ndarray, ids: np.ndarray, fids: np.ndarray | None = None) -> None:
    """Save a kinship as ``.npz`` with arrays ``K`` (``matrix``, ``(n, n)``), ``ids`` (IIDs,
    ``(n,)``) and, when given, ``fids`` (FIDs, ``(n,)``), IDs as text; written under a
    temporary name and renamed (:func:`flowpheno.io.atomic.atomic_path`). Example: :func:`read_kinship`."""
    arrays = {"K": matrix, "ids": np.asarray([str(v) for v in ids], dtype=str)}
    if fids is not None:
        arrays["fids"] = np.asarray([str(v) for v in fids], dtype=str)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, **arrays)


def spectral_decomposition(
    matrix: np.ndarray, source: str, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``K = U diag(k) U^T`` with ``k >= 0``; cached under a content hash of ``matrix``.

    Eigenvalues below ``-1e-6`` times the largest are an error (the matrix is not a
    valid kinship); smaller negatives are round-off and clipped to 0 with a warning. The
    cache stores how many were clipped, so a run that reads it warns exactly as the run
    that computed it (two identical fits record the same warnings); a cache written before
    it stored that count is recomputed once.
    ``matrix``: ``(n, n)``; ``source`` names it in messages; ``cache_dir``: where the cache
    file goes (None: no cache). Returns ``(k, U, cache_hit)``: eigenvalues ``(n,)`` ascending,
    eigenvectors ``(n, n)`` as columns.

    Raises:
        FlowphenoError: eigenvalues below the tolerance (not positive semi-definite), or a
            kinship without relatedness (all zeros, diagonal, or a multiple of the identity).

    Example:
        >>> K = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> k, U, cached = spectral_decomposition(K, "kinship.npz")
        >>> k, cached
        (array([0.5, 1. , 1.5]), False)
        >>> np.allclose(U @ np.diag(k) @ U.T, K)
        True
    """
    digest = hashlib.sha256(np.ascontiguousarray(matrix, dtype=np.float64).tobytes()).hexdigest()[:20]
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f".{Path(source).name}.eig-{matrix.shape[0]}-{digest}.npz"
        cached = _read_cache(cache, matrix.shape[0])
        if cached is not None:
            eigenvalues, eigenvectors, clipped = cached
            _warn_clipped(source, clipped)
            _check_relatedness(matrix, eigenvalues, source)
            return eigenvalues, eigenvectors, True
    eigenvalues, eigenvectors = scipy.linalg.eigh(matrix, overwrite_a=False, check_finite=False, driver="evd")
    largest = max(float(eigenvalues.max()), 0.0)
    negative = eigenvalues < -NEGATIVE_EIGENVALUE_TOLERANCE * largest
    if negative.any():
        raise FlowphenoError(
            f"{source}: kinship has {int(negative.sum())} eigenvalues below -{NEGATIVE_EIGENVALUE_TOLERANCE:g} x the "
            f"largest (smallest {eigenvalues.min():.3g}); it is not positive "
            "semi-definite: recompute it (e.g. flowpheno grm) or bend it"
        )
    clipped = int((eigenvalues < 0).sum())
    _warn_clipped(source, clipped)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    _check_relatedness(matrix, eigenvalues, source)
    if cache is not None:
        try:
            with atomic_path(cache) as tmp:
                with tmp.open("wb") as handle:
                    np.savez(handle, eigenvalues=eigenvalues, eigenvectors=eigenvectors, clipped=np.int64(clipped))
        except OSError as error:
            warn(f"could not cache the eigendecomposition in {cache.parent}: {error}")
    return eigenvalues, eigenvectors, False


def _warn_clipped(source: str, clipped: int) -> None:
    if clipped:
        warn(
            f"{source}: clipped {clipped} tiny negative eigenvalues (round-off, above "
            f"-{NEGATIVE_EIGENVALUE_TOLERANCE:g} x the largest) to 0"
        )


def _read_cache(cache: Path, n: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The cached ``(k, U, eigenvalues clipped)``, or None when absent or written without the
    clipped count (an older cache: recomputed and replaced). An unreadable or inconsistent
    cache file (truncated by a killed run, a full disk) is named in a warning and deleted,
    so the decomposition is recomputed and cached again."""
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as archive:
            eigenvalues, eigenvectors = archive["eigenvalues"], archive["eigenvectors"]
            clipped = archive["clipped"] if "clipped" in archive.files else None
        if eigenvalues.shape != (n,) or eigenvectors.shape != (n, n):
            raise ValueError(
                f"arrays of shape {eigenvalues.shape} and {eigenvectors.shape}, expected ({n},) and ({n}, {n})"
            )
        if not (np.isfinite(eigenvalues).all() and np.isfinite(eigenvectors).all()):
            raise ValueError("non-finite values")
        if clipped is not None and (clipped.shape != () or not 0 <= int(clipped) <= n):
            raise ValueError(f"clipped count {clipped!r}, expected one number in [0, {n}]")
    except Exception as error:  # zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, ...: all mean "unusable"
        reason = " ".join(str(error).split()) or type(error).__name__
        warn(f"{cache}: unreadable eigendecomposition cache ({reason}); deleted it and recomputing")
        try:
            cache.unlink()
        except OSError:
            pass
        return None
    if clipped is None:  # written before the cache held the clipped count: recomputed (and replaced) once
        return None
    return eigenvalues, eigenvectors, int(clipped)


def _check_relatedness(matrix: np.ndarray, eigenvalues: np.ndarray, source: str) -> None:
    """Refuse a kinship without relatedness: all zeros (no scale), diagonal, or within round-off
    of a multiple of the identity (``s2 K + (1 - s2) I`` is then ``I`` for every ``s2``: ``s2``
    is not identifiable and any value reported would be arbitrary)."""
    largest = float(eigenvalues.max())
    if largest <= 0:
        raise FlowphenoError(
            f"{source}: the kinship of the {len(eigenvalues)} individuals "
            "used is all zeros; recompute it (e.g. flowpheno grm)"
        )
    diagonal = np.count_nonzero(matrix) == np.count_nonzero(np.diagonal(matrix))  # counts without an n x n copy
    if diagonal or largest - float(eigenvalues.min()) <= NO_RELATEDNESS_TOLERANCE * largest:
        raise FlowphenoError(
            f"{source}: the kinship of the {len(eigenvalues)} individuals used carries no relatedness (all "
            "off-diagonal entries are 0), so s2 is not identifiable; use --mode iid, or check the kinship"
        )
