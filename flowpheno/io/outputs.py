"""Gaussianized phenotype files: TSV with header, GEMMA ``-p`` (no header), parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError, warn
from flowpheno.io.atomic import atomic_path
from flowpheno.io.ids import align, sample_keys
from flowpheno.io.plink import check_bed, fam_keys, read_fam

FORMATS = ("tsv", "gemma", "parquet")


def order_like_fam(table: pd.DataFrame, fam_path: str | Path, source: str = "the phenotype table") -> pd.DataFrame:
    """Rows in ``.fam`` order (what GEMMA ``-p`` expects): the ``.fam``'s FID and IID,
    then each individual's traits (NA where the table has no row for it).

    Matched on (FID, IID), or on IID alone when ``table`` has no FID (see
    :func:`flowpheno.io.ids.align`). Raises :class:`FlowphenoError` when no
    individual matches, showing both files' first IDs.
    """
    fileset = Path(fam_path).with_suffix("")
    if all(Path(f"{fileset}{suffix}").is_file() for suffix in (".bed", ".bim")):
        check_bed(fileset)  # the fileset GEMMA will read with this file must be intact (.fam edited beside its .bed?)
    fam = read_fam(fam_path)
    traits = [column for column in table.columns if column not in ("FID", "IID")]
    alignment = align(
        sample_keys(table, source),
        fam_keys(fam, fam_path),
        hint="the output would be all NA; check that the phenotypes belong to this fileset",
    )
    left_out = len(table) - len(np.unique(alignment.positions[alignment.found]))
    if left_out:
        warn(
            f"{left_out} of {len(table)} individuals of {source} are not in {fam_path} (matched on {alignment.by}) "
            "and are left out of the output",
        )
    ordered = alignment.take(table[traits])
    return pd.concat([fam[["FID", "IID"]].reset_index(drop=True), ordered], axis=1)


def write_phenotypes(
    table: pd.DataFrame,
    path: str | Path,
    fmt: str = "tsv",
    fam: str | Path | None = None,
    source: str = "the phenotype table",
) -> pd.DataFrame:
    """Write FID, IID and trait columns; missing values as ``NA``. Atomic.

    ``gemma`` writes only the trait columns (one per trait, no header) in the order of
    ``fam``, which it requires, so that row i matches the i-th individual of the fileset.
    Returns the table as written (``.fam`` order with ``fam``), so that counts describe
    the file. ``source`` names the table's file in error messages. The ``gemma`` layout is
    GEMMA's ``-p`` phenotype file: one column per trait, one row per ``.fam`` line, ``NA``
    missing (GEMMA manual, 4.1.1).

    Raises:
        FlowphenoError: an unknown ``fmt``, ``gemma`` without ``fam``, no individual shared
            with ``fam`` (:func:`order_like_fam`), or the output cannot be written.

    Example:
        >>> import tempfile
        >>> from flowpheno.io.plink import write_plink
        >>> folder = tempfile.TemporaryDirectory()
        >>> prefix = Path(folder.name) / "cohort"
        >>> fam = pd.DataFrame({"FID": ["f1", "f1", "f2"], "IID": ["a", "b", "c"], "PAT": "0", "MAT": "0",
        ...                     "SEX": "1", "PHENO": "-9"})
        >>> bim = pd.DataFrame({"chrom": "1", "snp": ["rs1"], "cm": 0.0, "pos": [100], "a0": "A", "a1": "G"})
        >>> write_plink(prefix, np.array([[0.0], [1.0], [2.0]]), fam, bim)
        >>> traits = pd.DataFrame({"FID": ["f2", "f1"], "IID": ["c", "a"], "t1": [0.5, -1.25]})
        >>> written = write_phenotypes(traits, Path(folder.name) / "t1.txt", fmt="gemma", fam=f"{prefix}.fam")
        >>> print((Path(folder.name) / "t1.txt").read_text())
        -1.25
        NA
        0.5
        <BLANKLINE>
        >>> folder.cleanup()
    """
    if fmt not in FORMATS:
        raise FlowphenoError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fam is not None:
        table = order_like_fam(table, fam, source)
    elif fmt == "gemma":
        raise FlowphenoError("--format gemma needs --fam FILE: GEMMA reads phenotypes in the .fam order")
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            table.to_parquet(tmp, index=False)
        elif fmt == "gemma":
            values = table.drop(columns=["FID", "IID"]).to_numpy(dtype=float)
            np.savetxt(tmp, values, fmt="%.8g", delimiter="\t")
            text = tmp.read_text().replace("nan", "NA")
            tmp.write_text(text)
        else:
            table.to_csv(tmp, sep="\t", index=False, na_rep="NA", float_format="%.8g")
    return table
