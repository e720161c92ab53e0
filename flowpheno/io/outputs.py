"""Gaussianized phenotype files: TSV with header, GEMMA ``-p`` (no header), parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.io.atomic import atomic_path
from flowpheno.io.plink import read_fam

FORMATS = ("tsv", "gemma", "parquet")


def order_like_fam(table: pd.DataFrame, fam_path: str | Path) -> pd.DataFrame:
    """Rows in ``.fam`` order (what GEMMA ``-p`` expects); individuals without a row get NA."""
    fam = read_fam(fam_path)
    traits = [column for column in table.columns if column not in ("FID", "IID")]
    ordered = table.set_index("IID")[traits].reindex(fam["IID"].to_numpy())
    return pd.concat([fam[["FID", "IID"]].reset_index(drop=True), ordered.reset_index(drop=True)], axis=1)


def write_phenotypes(table: pd.DataFrame, path: str | Path, fmt: str = "tsv", fam: str | Path | None = None) -> None:
    """Write FID, IID and trait columns; missing values as ``NA``. Atomic.

    ``gemma`` writes only the trait columns (one per trait, no header) in the order of
    ``fam``, which it requires, so that row i matches the i-th individual of the fileset.
    """
    if fmt not in FORMATS:
        raise FlowphenoError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fam is not None:
        table = order_like_fam(table, fam)
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
