"""PLINK 1 binary filesets (via pandas-plink) and the centred GRM computed from them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pandas_plink import read_plink1_bin

from flowpheno.errors import FlowphenoError

FAM_COLUMNS = ["FID", "IID", "PAT", "MAT", "SEX", "PHENO"]


def plink_prefix(path: str | Path) -> Path:
    """``data/cohort``, ``data/cohort.bed`` and friends all name the prefix ``data/cohort``."""
    path = Path(path)
    if path.suffix in {".bed", ".bim", ".fam"}:
        path = path.with_suffix("")
    missing = [suffix for suffix in (".bed", ".bim", ".fam") if not path.with_suffix(path.suffix + suffix).exists()]
    if missing:
        raise FlowphenoError(f"{path}: PLINK fileset incomplete, missing {', '.join(path.name + m for m in missing)}")
    return path


def _member(prefix: Path, suffix: str) -> str:
    return str(prefix.with_suffix(prefix.suffix + suffix))


def read_fam(path: str | Path) -> pd.DataFrame:
    """The six ``.fam`` columns, IDs as strings."""
    fam = pd.read_csv(path, sep=r"\s+", header=None, names=FAM_COLUMNS, dtype=str, engine="python")
    return fam


def read_genotypes(prefix: str | Path):  # noqa: ANN201 - xarray.DataArray
    """Lazy (dask-backed) samples x variants counts of the ``.bim`` column-5 allele, NaN for missing."""
    prefix = plink_prefix(prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pandas-plink's own read_csv arguments
        return read_plink1_bin(
            _member(prefix, ".bed"), _member(prefix, ".bim"), _member(prefix, ".fam"), verbose=False, ref="a0"
        )


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
    memory is ``O(n^2 + n * chunk)``. Returns ``(K, IIDs, SNPs used)``.
    """
    genotypes = read_genotypes(prefix)
    n, m = genotypes.shape
    kinship = np.zeros((n, n))
    used = 0
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
        kinship += block @ block.T
        used += int(keep.sum())
    if used == 0:
        raise FlowphenoError(f"{prefix}: no SNP passes MAF >= {maf} and missingness <= {max_missing}; cannot compute a GRM")
    return kinship / used, np.asarray(genotypes.iid.values, dtype=str), used


_BED_MAGIC = bytes([0x6C, 0x1B, 0x01])
_BED_CODE = {2: 0b00, 1: 0b10, 0: 0b11}  # copies of the .bim column-5 allele -> 2-bit code; missing = 0b01


def write_plink(prefix: str | Path, dosage: np.ndarray, fam: pd.DataFrame, bim: pd.DataFrame) -> None:
    """Write a PLINK 1 fileset (SNP-major ``.bed``) from ``dosage``: samples x variants.

    ``dosage`` counts copies of the ``.bim`` column-5 allele (``a0``), NaN for missing;
    ``fam`` has the six ``.fam`` columns, ``bim`` has chrom, snp, cm, pos, a0, a1.
    Each file is written under a temporary name and renamed.
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
