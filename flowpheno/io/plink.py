"""PLINK 1 binary filesets (via pandas-plink) and the centred GRM computed from them."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from pandas_plink import read_plink1_bin

from flowpheno.errors import FlowphenoError
from flowpheno.io.ids import SampleKeys, sample_keys

FAM_COLUMNS = ["FID", "IID", "PAT", "MAT", "SEX", "PHENO"]


def plink_prefix(path: str | Path) -> Path:
    """``data/cohort``, ``data/cohort.bed`` and friends all name the prefix ``data/cohort``.

    The fileset is checked as PLINK checks it before anything reads it
    (:func:`check_bed`): every reader of ``.bed`` files goes through here.

    Raises:
        FlowphenoError: a member of the fileset is missing, or the ``.bed`` fails :func:`check_bed`.
    """
    path = Path(path)
    if path.suffix in {".bed", ".bim", ".fam"}:
        path = path.with_suffix("")
    missing = [suffix for suffix in (".bed", ".bim", ".fam") if not path.with_suffix(path.suffix + suffix).exists()]
    if missing:
        raise FlowphenoError(f"{path}: PLINK fileset incomplete, missing {', '.join(path.name + m for m in missing)}")
    check_bed(path)
    return path


def _member(prefix: Path, suffix: str) -> str:
    return str(prefix.with_suffix(prefix.suffix + suffix))


def _count_lines(path: str | Path) -> int:
    """Non-blank lines of a text file (``.bim``), read in binary blocks."""
    count = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                count += 1
    return count


def check_bed(prefix: str | Path) -> tuple[int, int]:
    """Check a ``.bed`` against its ``.fam`` and ``.bim`` as PLINK 1.9 does before reading.

    The file must start with the magic bytes ``0x6C 0x1B``, then ``0x01`` (SNP-major;
    ``0x00`` is the old individual-major layout), and hold exactly
    ``3 + ceil(n / 4) * m`` bytes for ``n`` ``.fam`` lines and ``m`` ``.bim`` lines
    (PLINK 1.9 manual, "PLINK 1 binary (.bed)"). Returns ``(n, m)``; raises
    :class:`FlowphenoError` with the expected and found sizes otherwise, and when the
    unused bits after the last individual are set (``.fam`` lines deleted).

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> prefix = Path(folder.name) / "cohort"
        >>> dosage = np.array([[0, 1, 2, np.nan], [1, 1, 0, 2], [2, 0, 1, 1]])  # 3 individuals x 4 SNPs
        >>> fam = pd.DataFrame({"FID": ["f1", "f1", "f2"], "IID": ["a", "b", "c"], "PAT": "0", "MAT": "0",
        ...                     "SEX": "1", "PHENO": "-9"})
        >>> bim = pd.DataFrame({"chrom": "1", "snp": ["rs1", "rs2", "rs3", "rs4"], "cm": 0.0,
        ...                     "pos": [100, 200, 300, 400], "a0": "A", "a1": "G"})
        >>> write_plink(prefix, dosage, fam, bim)
        >>> check_bed(prefix)  # (individuals, SNPs): 3 + ceil(3/4) * 4 = 7 bytes
        (3, 4)
        >>> read_fam(f"{prefix}.fam")[["FID", "IID"]]
          FID IID
        0  f1   a
        1  f1   b
        2  f2   c
        >>> folder.cleanup()
    """
    prefix = Path(prefix)
    stamps = tuple(
        (stat.st_mtime_ns, stat.st_size) for stat in (Path(_member(prefix, s)).stat() for s in (".bed", ".bim", ".fam"))
    )
    return _checked_bed(str(prefix), str(prefix.resolve()), stamps)


@functools.lru_cache(maxsize=32)
def _checked_bed(prefix_text: str, resolved: str, stamps: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """:func:`check_bed`'s work, remembered while the three files (``resolved``) are unchanged (``stamps``)."""
    prefix = Path(prefix_text)
    bed = _member(prefix, ".bed")
    n = len(read_fam(_member(prefix, ".fam")))
    m = _count_lines(_member(prefix, ".bim"))
    size = Path(bed).stat().st_size
    with open(bed, "rb") as handle:
        head = handle.read(3)
    if head[:2] != _BED_MAGIC[:2]:
        raise FlowphenoError(
            f"{bed}: not a PLINK 1 .bed file (first bytes {head[:2].hex(' ') or 'none'}, expected 6c 1b); "
            "convert it with plink --make-bed"
        )
    if head[2:3] != _BED_MAGIC[2:3]:
        mode = head[2:3].hex() or "missing"
        raise FlowphenoError(
            f"{bed}: mode byte {mode} is not SNP-major (01); individual-major .bed files are not read: "
            "rewrite it with plink --make-bed"
        )
    expected = 3 + (n + 3) // 4 * m
    if size != expected:
        raise FlowphenoError(
            f"{bed}: {size} bytes, but {n} individuals in {prefix.name}.fam and {m} variants in {prefix.name}.bim "
            f"need 3 + ceil({n}/4) * {m} = {expected} bytes; the .bed does not belong to this .fam/.bim (were lines "
            "deleted?): subset filesets with plink --keep/--extract --make-bed"
        )
    _check_padding(bed, n, m)
    return n, m


PADDING_CHECKED_VARIANTS = 4096
"""How many variants' last bytes :func:`_check_padding` reads (the first ones)."""


def _check_padding(bed: str, n: int, m: int) -> None:
    """The unused 2-bit slots after the last individual of each variant must be 0 (PLINK
    writes them so). When ``n`` is not a multiple of 4, deleting 1-3 ``.fam`` lines keeps
    the size of the ``.bed``; the genotypes of the individuals no longer listed then sit in
    these slots, and every later individual would be read shifted. Raises FlowphenoError."""
    used = n % 4
    if used == 0 or m == 0:
        return
    per_variant = (n + 3) // 4
    checked = min(m, PADDING_CHECKED_VARIANTS)
    data = np.memmap(bed, dtype=np.uint8, mode="r", offset=3, shape=(checked, per_variant))
    mask = (0xFF << (2 * used)) & 0xFF
    set_bits = np.flatnonzero(np.asarray(data[:, -1]) & mask)
    if set_bits.size:
        raise FlowphenoError(
            f"{bed}: the unused bits after individual {n} are set in {set_bits.size} of the first {checked} variants "
            f"(first: variant {int(set_bits[0]) + 1}): the .bed holds more individuals than the {n} of its .fam (were "
            "lines deleted?); subset filesets with plink --keep "
            "--make-bed, or rewrite an intact fileset with plink --make-bed"
        )


def read_fam(path: str | Path) -> pd.DataFrame:
    """The six ``.fam`` columns by position, IDs as text, in file order.

    Columns are whitespace separated; FID and IID are always the first two fields
    (PLINK reads them by position), IDs are kept exactly (``000123``, ``NA``, ``-9``).
    Extra columns (GEMMA's multi-phenotype ``.fam``) are accepted and ignored. A line
    with fewer than six fields, or a (FID, IID) pair listed twice, raises
    :class:`FlowphenoError` naming the line. ``fam.attrs["lines"]`` holds 1-based lines.
    (PLINK 1.9 manual, ".fam"; example: :func:`check_bed`.)
    """
    path = Path(path)
    if not path.exists():
        raise FlowphenoError(f"{path}: file not found")
    from flowpheno.io.tables import decode_text

    rows, numbers = [], []
    for number, line in enumerate(decode_text(path).split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 6:
            raise FlowphenoError(
                f"{path}: line {number} has {len(fields)} fields; a "
                ".fam line has six (FID IID father mother sex phenotype)"
            )
        rows.append(fields[:6])
        numbers.append(number)
    fam = pd.DataFrame(rows, columns=FAM_COLUMNS, dtype=str) if rows else pd.DataFrame(columns=FAM_COLUMNS, dtype=str)
    fam.attrs["lines"] = numbers
    fam_keys(fam, path)  # a (FID, IID) pair twice is an error naming both lines
    return fam


BIM_COLUMNS = ["chrom", "snp", "cm", "pos", "a0", "a1"]


def read_bim(path: str | Path) -> pd.DataFrame:
    """The six ``.bim`` columns (chrom, snp, cm, pos, a0, a1) in file order.

    Chromosome codes and SNP IDs are kept as text exactly (``chr1``, ``01``,
    ``scaffold_12``); ``pos`` is an integer (PLINK writes ``-9`` for an unknown
    position). Raises :class:`FlowphenoError` naming the file and the line when a line
    has fewer than six fields or a position that is not an integer (PLINK 1.9 manual, ".bim").
    """
    path = Path(path)
    if not path.is_file():
        raise FlowphenoError(f"{path}: file not found")
    try:
        bim = pd.read_csv(
            path,
            sep=r"\s+",
            header=None,
            usecols=range(6),
            names=BIM_COLUMNS,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, ValueError) as error:
        raise FlowphenoError(
            f"{path}: not a .bim file ({' '.join(str(error).split())}); a .bim line has six fields"
        ) from None
    short = (bim.isna() | (bim == "")).any(axis=1).to_numpy()
    if short.any():
        raise FlowphenoError(
            f"{path}: line {int(np.flatnonzero(short)[0]) + 1} has fewer than six fields; a .bim line is "
            "chromosome, SNP ID, cM, position, allele 1, allele 2"
        )
    position = pd.to_numeric(bim["pos"], errors="coerce")
    bad = (position.isna() | (position != position.round())).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FlowphenoError(f"{path}: line {row + 1}: position {bim['pos'].iloc[row]!r} is not an integer")
    bim["pos"] = position.astype(np.int64)
    return bim


def bim_chromosomes(bim: pd.DataFrame) -> list[str]:
    """Chromosome codes of a :func:`read_bim` table, each once, in order of first appearance."""
    return list(dict.fromkeys(bim["chrom"]))


def unique_id_fix(snp: str) -> str:
    """How to give a repeated SNP ID's variants unique IDs: PLINK 1.9 ``--set-missing-var-ids``
    renames only missing IDs (``.``); any other repeated ID is renamed in the ``.bim`` itself."""
    if snp == ".":
        return "name the unnamed SNPs (plink1.9 --bfile PREFIX --set-missing-var-ids @:# --make-bed --out NEW)"
    return (
        "rename the repeats in column 2 of the .bim (e.g. to CHR:BP:A1:A2; the .bed and .fam do not change); "
        "PLINK's --set-missing-var-ids renames only IDs given as '.'"
    )


def check_snp_ids(bim: pd.DataFrame, source: str | Path) -> None:
    """Every SNP ID of a ``.bim`` is unique: GEMMA ``-snps`` lists, PLINK ``--exclude`` and the
    association tables name SNPs by ID. Raises :class:`FlowphenoError` naming the ID and its lines."""
    duplicated = bim["snp"].duplicated(keep=False)
    if duplicated.any():
        snp = bim["snp"][duplicated].iloc[0]
        lines = [str(i + 1) for i in bim.index[bim["snp"] == snp][:3]]
        raise FlowphenoError(
            f"{source}: SNP ID {snp!r} is on lines {', '.join(lines)}; every SNP needs a unique ID: "
            + unique_id_fix(snp)
        )


def plink_unsorted(bim: pd.DataFrame) -> str | None:
    """Why PLINK 1.9 would call this ``.bim`` unsorted, or ``None`` when it is sorted.

    PLINK 1.9 skips variants with a negative position, stops on a chromosome whose
    variants are not in one block ("split chromosome", for every command but
    ``--make-bed``), and refuses ``--clump`` (and other window-based commands) when a
    position decreases within a chromosome ("requires a sorted .bim"). Both are
    checked here by chromosome code as written in the ``.bim``.

    Example:
        >>> bim = pd.DataFrame({"chrom": ["1", "1", "1", "2"], "snp": ["rs1", "rs2", "rs3", "rs4"],
        ...                     "pos": [100, 300, 200, 50]})
        >>> plink_unsorted(bim)
        "line 3: position 200 of rs3 on chromosome '1' comes after a larger one"
        >>> plink_unsorted(bim.sort_values(["chrom", "pos"])) is None
        True
    """
    codes = bim["chrom"].to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    block_codes = codes[starts]
    if len(set(block_codes)) != len(block_codes):
        seen: set[str] = set()
        for start, code in zip(starts, block_codes, strict=True):
            if code in seen:
                return (
                    f"chromosome {code!r} is split: it appears again at line {bim.index[start] + 1} "
                    "after other chromosomes"
                )
            seen.add(code)
    placed = bim[bim["pos"] >= 0]
    previous = placed.groupby("chrom", sort=False)["pos"].shift()
    decreasing = (placed["pos"] < previous).to_numpy()
    if decreasing.any():
        row = placed.index[int(np.flatnonzero(decreasing)[0])]
        return (
            f"line {row + 1}: position {bim.at[row, 'pos']} of {bim.at[row, 'snp']} on chromosome "
            f"{bim.at[row, 'chrom']!r} comes after a larger one"
        )
    return None


def fam_keys(fam: pd.DataFrame, source: str | Path) -> SampleKeys:
    """(FID, IID) keys of a :func:`read_fam` table, with its line numbers."""
    lines = fam.attrs.get("lines")
    return sample_keys(fam, str(source), None if lines is None else np.asarray(lines), fid=True)


def fileset_keys(prefix: str | Path) -> SampleKeys:
    """(FID, IID) of the individuals of a PLINK fileset, in ``.fam`` order."""
    fam_path = _member(Path(prefix), ".fam")
    return fam_keys(read_fam(fam_path), fam_path)


def read_genotypes(prefix: str | Path):  # noqa: ANN201 - xarray.DataArray
    """Lazy (dask-backed) counts of the ``.bim`` column-5 allele, ``(n, m)`` (samples x variants),
    NaN for missing, as an ``xarray.DataArray`` (pandas-plink ``read_plink1_bin``).

    Raises:
        FlowphenoError: as :func:`plink_prefix`.
    """
    prefix = plink_prefix(prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pandas-plink's own read_csv arguments
        return read_plink1_bin(
            _member(prefix, ".bed"), _member(prefix, ".bim"), _member(prefix, ".fam"), verbose=False, ref="a0"
        )


def _filtered_chunks(
    prefix: str | Path, maf: float, max_missing: float, chunk_variants: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks of SNPs passing GEMMA's filters: (counts minus mean with missing calls at 0,
    allele frequency), each ``n x chunk``."""
    genotypes = read_genotypes(prefix)
    m = genotypes.shape[1]
    for start in range(0, m, chunk_variants):
        block = np.asarray(genotypes[:, start : start + chunk_variants].values, dtype=np.float64)
        missing = np.isnan(block)
        called = (~missing).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(block, axis=0) / called
        frequency = mean / 2
        keep = (called > 0) & (missing.mean(axis=0) <= max_missing) & (np.minimum(frequency, 1 - frequency) >= maf)
        block = block[:, keep] - mean[keep]
        block[np.isnan(block)] = 0.0
        yield block, frequency[keep]


def _sample_ids(prefix: str | Path) -> np.ndarray:
    return read_fam(_member(plink_prefix(prefix), ".fam"))["IID"].to_numpy(dtype=str)


def sample_fids(prefix: str | Path) -> np.ndarray:
    """FIDs of a fileset's individuals in ``.fam`` order (the partners of the IIDs
    :func:`centred_grm` and :func:`standardised_genotype_factor` return)."""
    return read_fam(
        _member(
            Path(prefix).with_suffix("") if Path(prefix).suffix in {".bed", ".bim", ".fam"} else Path(prefix), ".fam"
        )
    )["FID"].to_numpy(dtype=str)


def centred_grm(
    prefix: str | Path,
    maf: float = 0.01,
    max_missing: float = 0.05,
    chunk_variants: int = 4096,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Centred relatedness matrix ``K = W W^T / p`` as GEMMA ``-gk 1`` computes it.

    ``W`` holds each SNP's allele counts minus their mean, missing calls set to the
    mean; SNPs with minor allele frequency below ``maf`` or missingness above
    ``max_missing`` are skipped (GEMMA's defaults). Read in chunks of variants, so
    memory is ``O(n^2 + n * chunk)``. Returns ``(K, IIDs, SNPs used)``: ``K`` is ``(n, n)``,
    IIDs ``(n,)`` in ``.fam`` order.

    Raises:
        FlowphenoError: the fileset fails :func:`plink_prefix`, or no SNP passes the filters.
    """
    ids = _sample_ids(prefix)
    kinship = np.zeros((len(ids), len(ids)))
    used = 0
    for block, _ in _filtered_chunks(prefix, maf, max_missing, chunk_variants):
        kinship += block @ block.T
        used += block.shape[1]
    if used == 0:
        raise FlowphenoError(
            f"{prefix}: no SNP passes MAF >= {maf} and missingness <= {max_missing}; cannot compute a GRM"
        )
    return kinship / used, ids, used


def standardised_genotype_factor(
    prefix: str | Path,
    maf: float = 0.01,
    max_missing: float = 0.05,
    chunk_variants: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank kinship factor ``W = G_std / sqrt(M)`` (``n x M``, float32) from a ``.bed``.

    Each SNP passing the filters of :func:`centred_grm` is standardised,
    ``(g - 2p) / sqrt(2p(1-p))`` with missing calls at 0, so ``K = W W^T`` is the
    standardised GRM. Read in chunks; no ``n x n`` matrix. Meant for ``M < n`` SNPs
    (for example an LD-pruned panel): ``K`` then has rank at most ``M``.
    Returns ``(W, IIDs)``: ``W`` is ``(n, M)`` for the ``M`` SNPs kept, IIDs ``(n,)``.

    Raises:
        FlowphenoError: no SNP passes the filters, or ``M >= n`` (the factor would not be low rank).
    """
    ids = _sample_ids(prefix)
    chunks = []
    for block, frequency in _filtered_chunks(prefix, maf, max_missing, chunk_variants):
        chunks.append((block / np.sqrt(2 * frequency * (1 - frequency))).astype(np.float32))
    used = sum(chunk.shape[1] for chunk in chunks)
    if used == 0:
        raise FlowphenoError(
            f"{prefix}: no SNP passes MAF >= {maf} and missingness <= {max_missing}; cannot build a kinship factor"
        )
    if used >= len(ids):
        raise FlowphenoError(
            f"{prefix}: {used} SNPs pass the filters for {len(ids)} individuals; a genotype factor is low rank only "
            "with fewer SNPs than individuals: LD-prune the panel (plink --indep-pairwise) or pass the prefix as --grm"
        )
    return np.concatenate(chunks, axis=1) / np.float32(np.sqrt(used)), ids


_BED_MAGIC = bytes([0x6C, 0x1B, 0x01])
_BED_CODE = {2: 0b00, 1: 0b10, 0: 0b11}  # copies of the .bim column-5 allele -> 2-bit code; missing = 0b01


def write_plink(prefix: str | Path, dosage: np.ndarray, fam: pd.DataFrame, bim: pd.DataFrame) -> None:
    """Write a PLINK 1 fileset (SNP-major ``.bed``) from ``dosage``: samples x variants.

    ``dosage``: ``(n, m)``, copies (0, 1, 2) of the ``.bim`` column-5 allele (``a0``), NaN for
    missing; ``fam``: ``n`` rows with the six ``.fam`` columns; ``bim``: ``m`` rows with chrom,
    snp, cm, pos, a0, a1. Each file is written under a temporary name and renamed. The
    2-bit codes are PLINK 1.9's (manual, "PLINK 1 binary (.bed)"). Example: :func:`check_bed`.
    """
    from flowpheno.io.atomic import atomic_path

    prefix = Path(prefix)
    n, m = dosage.shape
    codes = np.full((m, n), 0b01, dtype=np.uint8)
    counts = dosage.T
    for value, code in _BED_CODE.items():
        codes[counts == value] = code
    padded = np.zeros((m, (n + 3) // 4 * 4), dtype=np.uint8)
    padded[:, :n] = codes
    quads = padded.reshape(m, -1, 4)
    packed = quads[:, :, 0] | (quads[:, :, 1] << 2) | (quads[:, :, 2] << 4) | (quads[:, :, 3] << 6)
    with atomic_path(_member(prefix, ".bed")) as tmp:
        tmp.write_bytes(_BED_MAGIC + packed.astype(np.uint8).tobytes())
    with atomic_path(_member(prefix, ".bim")) as tmp:
        bim[["chrom", "snp", "cm", "pos", "a0", "a1"]].to_csv(tmp, sep="\t", header=False, index=False)
    with atomic_path(_member(prefix, ".fam")) as tmp:
        fam[FAM_COLUMNS].to_csv(tmp, sep=" ", header=False, index=False)
