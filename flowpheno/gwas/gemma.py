"""GEMMA runs: the centred GRM (``-gk 1``) and the LMM score tests (``-lmm 3``).

Each run happens in a scratch directory with ``-outdir``; outputs are renamed into
place only when GEMMA succeeded. Phenotypes always come from ``-p`` (never the
``.fam`` column, whose missing values make GEMMA drop everyone).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.gwas.tools import require, run_logged
from flowpheno.io.atomic import atomic_path
from flowpheno.io.plink import bim_chromosomes, check_snp_ids, plink_prefix, read_bim, read_fam, unique_id_fix

MIN_PHENOTYPED = 10
"""Fewest individuals with a trait (with every trait, for the mvLMM) GEMMA is asked to test."""
GEMMA_MISSING = ("NA", "-9")
"""What GEMMA reads as a missing phenotype in a ``-p`` file (GEMMA manual, 4.1.1)."""


def _finite_number(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def check_gemma_kinship(kinship: str | Path, n_fam: int) -> None:
    """Check a kinship for GEMMA ``-k`` before any GEMMA run: a text matrix (``.cXX.txt``,
    as ``gemma -gk 1`` or ``flowpheno gwas grm`` writes it) with ``n_fam`` rows of ``n_fam``
    numbers, in the ``.fam`` order. Reads the file line by line (no matrix in memory).
    Raises :class:`~flowpheno.errors.FlowphenoError` naming the file, the line and the fix.
    """
    kinship = Path(kinship)
    if not kinship.is_file():
        raise FlowphenoError(
            f"{kinship}: file not found; give the .cXX.txt written by flowpheno gwas grm (GEMMA -gk 1)"
        )
    with kinship.open("rb") as handle:
        if handle.read(2) == b"PK":
            raise FlowphenoError(
                f"{kinship}: a .npz archive; GEMMA reads a text matrix: give the .cXX.txt of flowpheno gwas grm"
            )
    rows = 0
    with kinship.open(errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            rows += 1
            cells = line.split()
            fields = len(cells)
            if fields == n_fam:
                try:
                    finite = np.isfinite(np.array(cells, dtype=float)).all()
                except ValueError:
                    finite = False
                if not finite:
                    bad = next(k for k, cell in enumerate(cells) if not _finite_number(cell))
                    raise FlowphenoError(
                        f"{kinship}, line {number}, value {bad + 1}: {cells[bad]!r} is not a finite number; recompute "
                        "the kinship (flowpheno gwas grm --bfile PREFIX)"
                    )
            if fields != n_fam:
                raise FlowphenoError(
                    f"{kinship}, line {number}: {fields} values, but the .fam lists {n_fam} individuals; compute the "
                    "kinship from this fileset (flowpheno gwas grm --bfile PREFIX)"
                )
    if rows != n_fam:
        raise FlowphenoError(
            f"{kinship}: {rows} rows, but the .fam lists {n_fam} individuals (a truncated file?); compute the kinship "
            "from this fileset (flowpheno gwas grm --bfile PREFIX)"
        )


def check_gemma_phenotypes(pheno: str | Path, columns: list[int], n_fam: int | None = None) -> np.ndarray:
    """Check a GEMMA ``-p`` file before any GEMMA run: every selected column exists, has
    at least :data:`MIN_PHENOTYPED` values and is not constant, and (for an mvLMM, more
    than one column) at least that many individuals have every selected value.

    ``pheno``: whitespace-separated, no header, one row per ``.fam`` individual (``n_fam``
    rows when given), ``NA``/``-9`` missing; ``columns`` are 1-based (GEMMA ``-n``).
    Returns the selected columns, ``(n, len(columns))``, NaN where missing.
    Raises :class:`~flowpheno.errors.FlowphenoError` naming the file, column and line.
    """
    pheno = Path(pheno)
    if not pheno.is_file():
        raise FlowphenoError(
            f"{pheno}: file not found; give the GEMMA -p file written by flowpheno transform or gwas rint"
        )
    lines = pheno.read_text(errors="replace").splitlines()
    rows = [line.split() for line in lines]
    if n_fam is not None and len(rows) != n_fam:
        raise FlowphenoError(
            f"{pheno}: {len(rows)} rows but the .fam has {n_fam}; GEMMA reads one row per .fam line, "
            "in .fam order: write it with --format gemma --fam"
        )
    if not rows:
        raise FlowphenoError(f"{pheno}: empty; write it with --format gemma --fam")
    width = len(rows[0])
    for number, fields in enumerate(rows, start=1):
        if len(fields) != width:
            raise FlowphenoError(
                f"{pheno}, line {number}: {len(fields)} values where line 1 has {width}; "
                "every row needs one value (or NA) per trait"
            )
    for column in columns:
        if not 1 <= column <= width:
            raise FlowphenoError(
                f"{pheno}: --columns {column}: the file has {width} phenotype column(s); choose from 1-{width}"
            )
    values = np.full((len(rows), len(columns)), np.nan)
    for j, column in enumerate(columns):
        for i, fields in enumerate(rows):
            text = fields[column - 1]
            if text in GEMMA_MISSING:
                continue
            try:
                values[i, j] = float(text)
            except ValueError:
                raise FlowphenoError(
                    f"{pheno}, line {i + 1}, column {column}: {text!r} is not a number; use NA for a missing value"
                ) from None
            if not np.isfinite(values[i, j]):
                raise FlowphenoError(f"{pheno}, line {i + 1}, column {column}: {text!r}; use NA for a missing value")
    for j, column in enumerate(columns):
        present = values[np.isfinite(values[:, j]), j]
        if present.size < MIN_PHENOTYPED:
            raise FlowphenoError(
                f"{pheno}: column {column} has {present.size} non-missing value(s); GEMMA needs at least "
                f"{MIN_PHENOTYPED}: drop that trait from --columns"
            )
        if np.ptp(present) == 0:
            raise FlowphenoError(
                f"{pheno}: column {column} is constant ({present[0]:g} for all {present.size}); "
                "it carries no association: drop it from --columns"
            )
    complete = int(np.isfinite(values).all(axis=1).sum())
    if len(columns) > 1 and complete < MIN_PHENOTYPED:
        raise FlowphenoError(
            f"{pheno}: only {complete} individual(s) have every one of columns "
            f"{','.join(map(str, columns))}; the mvLMM needs at least {MIN_PHENOTYPED}: "
            "test fewer traits together"
        )
    return values


def chromosome_snps(bfile: str | Path, chromosome: str, on: bool) -> list[str]:
    """IDs of the ``.bim`` SNPs on ``chromosome`` (``on``), or on every other chromosome.

    Codes are compared as written in the ``.bim`` (``chr1`` is not ``1``). Raises
    :class:`~flowpheno.errors.FlowphenoError` when no SNP is on ``chromosome``, when
    none is left, or when SNP IDs repeat (GEMMA ``-snps`` selects by ID).
    """
    bim_path = f"{plink_prefix(bfile)}.bim"
    bim = read_bim(bim_path)
    check_snp_ids(bim, bim_path)
    chromosomes = bim_chromosomes(bim)
    if chromosome not in chromosomes:
        shown = ", ".join(chromosomes[:30]) + (", ..." if len(chromosomes) > 30 else "")
        raise FlowphenoError(f"{bim_path}: no SNP on chromosome {chromosome!r}; its chromosomes: {shown}")
    selected = bim.loc[(bim["chrom"] == chromosome) == on, "snp"].tolist()
    if not selected:
        raise FlowphenoError(
            f"{bim_path}: every SNP is on chromosome {chromosome!r}; a leave-one-chromosome-out GRM "
            "needs SNPs on other chromosomes: compute one GRM from all SNPs (without --loco)"
        )
    return selected


def gemma_grm(bfile: str | Path, out: str | Path, loco: str | None = None) -> Path:
    """``gemma -gk 1`` (centred GRM) over every individual of ``bfile``; writes ``out`` (a ``.cXX.txt``).

    ``loco``: a chromosome code of the ``.bim``; the GRM then uses every SNP not on it
    (leave-one-chromosome-out), selected with GEMMA ``-snps`` (GEMMA manual, 4.5: the
    same matrix as ``-gk 1`` on a fileset holding only those SNPs, without writing one).
    GEMMA's own ``-loco`` reads BIMBAM files only. GEMMA's log goes beside ``out`` (suffix
    ``.log``). Returns ``out``.

    Raises:
        FlowphenoError: GEMMA is not installed or fails, or ``loco`` names no chromosome of
            the ``.bim`` (:func:`chromosome_snps`).
    """
    gemma = require("gemma")
    prefix = plink_prefix(bfile).resolve()
    out = Path(out)
    n = len(read_fam(f"{prefix}.fam"))
    snps = chromosome_snps(prefix, loco, on=False) if loco is not None else None
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        scratch_path = Path(scratch)
        (scratch_path / "all.txt").write_text("1\n" * n)  # every individual "phenotyped", so none is dropped
        command = [gemma, "-bfile", str(prefix), "-p", "all.txt", "-gk", "1", "-o", "grm", "-outdir", "out"]
        if snps is not None:
            (scratch_path / "snps.txt").write_text("\n".join(snps) + "\n")
            command += ["-snps", "snps.txt"]
        run_logged(command, out.with_suffix(".log"), cwd=scratch_path)
        result = scratch_path / "out" / "grm.cXX.txt"
        with atomic_path(out) as tmp:
            shutil.copyfile(result, tmp)
    return out


def gemma_lmm(
    bfile: str | Path,
    kinship: str | Path,
    pheno: str | Path,
    columns: list[int],
    out: str | Path,
    covariates: str | Path | None = None,
    chromosome: str | None = None,
) -> pd.DataFrame:
    """``gemma -lmm 3 -n columns [-c covariates]``: univariate (one column) or mvLMM score test.

    ``pheno`` is a GEMMA ``-p`` file (``.fam`` order); ``columns`` are 1-based;
    ``covariates`` a GEMMA ``-c`` file (:func:`write_gemma_covariates`). GEMMA analyses the
    individuals with every selected phenotype and every covariate present (GEMMA manual
    4.1.4; ``PARAM::ProcessCvtPhen``). ``chromosome`` (a ``.bim`` code) tests only the SNPs
    on it (GEMMA ``-snps``), e.g. with the leave-one-chromosome-out GRM of that chromosome.
    Writes GEMMA's own ``assoc.txt`` to ``out`` (its log beside it, ``out`` with suffix
    ``.log``) and returns SNP, CHR, BP, P (:func:`read_gemma_assoc`).

    Raises:
        FlowphenoError: GEMMA is not installed, fails (the tail of its log), or writes no table.
    """
    gemma = require("gemma")
    prefix = plink_prefix(bfile).resolve()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        scratch_path = Path(scratch)
        command = [
            gemma,
            "-bfile",
            str(prefix),
            "-k",
            str(Path(kinship).resolve()),
            "-p",
            str(Path(pheno).resolve()),
            "-n",
            *map(str, columns),
            "-lmm",
            "3",
            "-o",
            "assoc",
            "-outdir",
            "out",
        ]
        if covariates is not None:
            command += ["-c", str(Path(covariates).resolve())]
        if chromosome is not None:
            (scratch_path / "snps.txt").write_text("\n".join(chromosome_snps(prefix, chromosome, on=True)) + "\n")
            command += ["-snps", "snps.txt"]
        run_logged(command, out.with_suffix(".log"), cwd=scratch_path)
        result = scratch_path / "out" / "assoc.assoc.txt"
        if not result.exists():
            raise FlowphenoError(f"GEMMA wrote no association file; see {out.with_suffix('.log')}")
        with atomic_path(out) as tmp:
            shutil.copyfile(result, tmp)
    return read_gemma_assoc(out)


def gemma_covariate_design(covar: str | Path, fam: str | Path) -> pd.DataFrame:
    """The covariates of ``covar`` as GEMMA's ``-c`` design: rows in ``.fam`` order, an
    ``intercept`` column of 1s first, then the covariates (text columns one-hot, as
    ``flowpheno fit --covar`` reads them: :func:`flowpheno.io.phenotypes.aligned_covariates`);
    NaN where an individual is absent from ``covar`` or a value is missing.

    Matched on (FID, IID), or IID alone when ``covar`` has no FID. Raises
    :class:`~flowpheno.errors.FlowphenoError` when no individual matches.
    """
    from flowpheno.io.phenotypes import aligned_covariates
    from flowpheno.io.plink import fam_keys

    fam_table = read_fam(fam)
    aligned, _, _ = aligned_covariates(covar, fam_keys(fam_table, fam))
    design = aligned.astype(float)
    design.insert(0, "intercept", np.where(design.notna().all(axis=1), 1.0, np.nan))
    return design


def check_covariate_design(design: pd.DataFrame, usable: np.ndarray, covar: str | Path, what: str) -> int:
    """Check a GEMMA ``-c`` design on the individuals GEMMA will analyse: those with
    ``usable`` phenotypes and every covariate present. Returns their number.

    GEMMA takes any column constant among them for an intercept, and a design of lower
    rank makes its covariate projection singular; both are refused, naming the column.
    Raises :class:`~flowpheno.errors.FlowphenoError`.
    """
    rows = usable & design.notna().all(axis=1).to_numpy()
    n = int(rows.sum())
    if n < MIN_PHENOTYPED:
        raise FlowphenoError(
            f"{covar}: only {n} individual(s) with {what} have every covariate; GEMMA needs at least "
            f"{MIN_PHENOTYPED}: fill the covariates or leave --covar out"
        )
    matrix = design.to_numpy()[rows]
    for j, name in enumerate(design.columns[1:], start=1):
        if np.ptp(matrix[:, j]) == 0:
            raise FlowphenoError(
                f"{covar}: covariate {name!r} is {matrix[0, j]:g} for all {n} individuals with {what}; "
                "GEMMA would take it for the intercept: remove that column"
            )
    rank = int(np.linalg.matrix_rank(matrix))
    if rank < matrix.shape[1]:
        raise FlowphenoError(
            f"{covar}: the covariates are collinear among the {n} individuals with {what} (rank {rank} "
            f"of {matrix.shape[1]} columns with the intercept): remove a redundant column"
        )
    return n


def write_gemma_covariates(design: pd.DataFrame, out: str | Path) -> Path:
    """Write a :func:`gemma_covariate_design` as a GEMMA ``-c`` file (no header,
    tab-separated, ``NA`` for missing: GEMMA drops those individuals). Atomic."""
    with atomic_path(out) as tmp:
        design.to_csv(tmp, sep="\t", header=False, index=False, na_rep="NA", float_format="%.10g")
    return Path(out)


def read_gemma_assoc(path: str | Path) -> pd.DataFrame:
    """SNP, CHR, BP and the score-test P from a GEMMA ``assoc.txt`` (its columns ``rs``,
    ``chr``, ``ps``, ``p_score``). One row per SNP tested.

    Raises:
        FlowphenoError: the table has no ``p_score`` column (GEMMA was not run with ``-lmm 3``).
    """
    table = pd.read_csv(path, sep="\t", dtype={"rs": str, "chr": str})
    if "p_score" not in table.columns:
        raise FlowphenoError(f"{path}: no p_score column; was GEMMA run with -lmm 3?")
    return pd.DataFrame({"SNP": table["rs"], "CHR": table["chr"], "BP": table["ps"], "P": table["p_score"]})


def min_p_over_traits(per_trait: list[pd.DataFrame], snp_order: list[str] | None = None) -> pd.DataFrame:
    """The ``single`` baseline: per SNP, the smallest p over the traits tested there, times
    their number (Bonferroni).

    GEMMA applies its MAF and missingness filters to each trait's own individuals, so the
    per-trait tables can hold different SNPs: they are combined on the union of SNPs (in
    the order of ``snp_order``, the ``.bim``'s SNP IDs, when given; otherwise in order of
    first appearance); a SNP a trait did not test contributes no p-value and does
    not count in the factor. The per-trait p-values are kept as ``P_1 .. P_d`` (NaN where
    untested): the combined P is conservative by construction, so calibration (lambda GC)
    is judged on the per-trait tests.

    ``per_trait``: one table (SNP, CHR, BP, P) per trait, in trait order. Returns SNP, CHR,
    BP, P, ``TRAITS_TESTED`` and ``P_1 .. P_d``.

    Raises:
        FlowphenoError: a table names one SNP twice (the ``.bim`` needs unique SNP IDs).

    Example:
        >>> first = pd.DataFrame({"SNP": ["rs1", "rs2"], "CHR": "1", "BP": [100, 200], "P": [0.01, 0.5]})
        >>> second = pd.DataFrame({"SNP": ["rs2", "rs3"], "CHR": "1", "BP": [200, 300], "P": [0.002, 0.3]})
        >>> min_p_over_traits([first, second], snp_order=["rs1", "rs2", "rs3"])
           SNP CHR   BP      P  TRAITS_TESTED   P_1    P_2
        0  rs1   1  100  0.010              1  0.01    NaN
        1  rs2   1  200  0.004              2  0.50  0.002
        2  rs3   1  300  0.300              1   NaN  0.300
    """
    frames = []
    for table in per_trait:
        duplicated = table["SNP"].duplicated()
        if duplicated.any():
            snp = str(table["SNP"][duplicated].iloc[0])
            raise FlowphenoError(
                f"SNP ID {snp!r} appears more than once in the association results: every SNP of the .bim needs a "
                f"unique ID: {unique_id_fix(snp)}"
            )
        frames.append(table.set_index("SNP"))
    order = pd.Index(pd.concat([frame.index.to_series() for frame in frames]).drop_duplicates())
    if snp_order is not None:
        listed = pd.Index(snp_order)
        order = listed[listed.isin(order)].append(order[~order.isin(listed)])
    positions = pd.concat([frame[["CHR", "BP"]] for frame in frames])
    positions = positions[~positions.index.duplicated()].reindex(order)
    p_values = np.column_stack([frame["P"].reindex(order).to_numpy(dtype=float) for frame in frames])
    tested = np.isfinite(p_values).sum(axis=1)
    merged = pd.DataFrame(
        {"SNP": order.to_numpy(), "CHR": positions["CHR"].to_numpy(), "BP": positions["BP"].to_numpy()}
    )
    with np.errstate(invalid="ignore"):
        smallest = np.where(
            tested > 0, np.fmin.reduce(np.where(np.isfinite(p_values), p_values, np.inf), axis=1), np.nan
        )
    merged["P"] = np.minimum(smallest * tested, 1.0)
    merged["TRAITS_TESTED"] = tested
    for j in range(p_values.shape[1]):
        merged[f"P_{j + 1}"] = p_values[:, j]
    return merged


def gather_chromosomes(parts: list[str | Path], bfile: str | Path) -> pd.DataFrame:
    """One association table from per-chromosome ones (``flowpheno gwas assoc --chr``).

    Each part holds SNP, CHR, BP, P (and the per-trait columns of ``--per-trait``) for
    one chromosome; together they must name every chromosome of the ``.bim`` once and
    no SNP twice, and every SNP must be in the ``.bim``. Rows follow the ``.bim``'s
    chromosome order. Raises :class:`~flowpheno.errors.FlowphenoError` naming the part.
    """
    bim_path = f"{plink_prefix(bfile)}.bim"
    bim = read_bim(bim_path)
    chromosomes = bim_chromosomes(bim)
    known = set(bim["snp"])
    tables: dict[str, pd.DataFrame] = {}
    empty: list[pd.DataFrame] = []
    for part in map(Path, parts):
        if not part.is_file():
            raise FlowphenoError(f"{part}: file not found; give the tables written by flowpheno gwas assoc --chr")
        if part.stat().st_size and not part.read_bytes().endswith(b"\n"):
            raise FlowphenoError(f"{part}: the last line is cut (a truncated file?); rerun flowpheno gwas assoc --chr")
        table = pd.read_csv(part, sep="\t", dtype={"SNP": str, "CHR": str})
        missing = [column for column in ("SNP", "CHR", "BP", "P") if column not in table.columns]
        if missing:
            raise FlowphenoError(
                f"{part}: no column {', '.join(missing)}; give the tables written by flowpheno gwas assoc --chr"
            )
        if table.empty:
            empty.append(table)
            continue
        codes = list(dict.fromkeys(table["CHR"]))
        if len(codes) != 1:
            raise FlowphenoError(
                f"{part}: SNPs on chromosomes {', '.join(codes[:5])}; give one table per chromosome "
                "(flowpheno gwas assoc --chr)"
            )
        if codes[0] in tables:
            raise FlowphenoError(f"{part}: chromosome {codes[0]!r} is given twice; give each chromosome's table once")
        unknown = ~table["SNP"].isin(known)
        if unknown.any():
            raise FlowphenoError(
                f"{part}: SNP {table['SNP'][unknown].iloc[0]!r} is not in {bim_path}; gather the tables of this fileset"
            )
        tables[codes[0]] = table
    if len(tables) + len(empty) != len(chromosomes) or not set(tables) <= set(chromosomes):
        absent = [code for code in chromosomes if code not in tables]
        raise FlowphenoError(
            f"{len(parts)} tables for the {len(chromosomes)} chromosomes of {bim_path}; give one per "
            f"chromosome (without results: {', '.join(absent[:10])})"
        )
    if not tables:
        raise FlowphenoError(
            f"no SNP was tested on any chromosome of {bim_path}; check the GEMMA logs beside the tables"
        )
    gathered = pd.concat([tables[code] for code in chromosomes if code in tables], ignore_index=True)
    repeated = gathered["SNP"].duplicated()
    if repeated.any():
        raise FlowphenoError(
            f"SNP {gathered['SNP'][repeated].iloc[0]!r} is in two tables; give each chromosome's table once"
        )
    return gathered
