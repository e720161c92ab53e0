"""Write a simulated cohort to disk: PLINK files, phenotypes, covariates, truth, structure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from flowpheno.io.atomic import atomic_path
from flowpheno.io.plink import write_plink
from flowpheno.simulate.genotypes import simulate_genotypes
from flowpheno.simulate.phenotypes import simulate_phenotypes


def kinship_summary(dosage: np.ndarray) -> float:
    """Share of pairs whose GRM entry (unit mean diagonal) is at least 0.1; ``dosage``: ``(n, m)``."""
    centred = dosage - dosage.mean(axis=0)
    grm = centred @ centred.T / dosage.shape[1]
    grm /= np.mean(np.diag(grm))
    upper = np.triu_indices(len(grm), 1)
    return float((grm[upper] >= 0.1).mean())


def family_design(generations: int, family_size: int) -> str:
    """One line describing the pedigrees of :func:`~flowpheno.simulate.genotypes._family_pedigree`.

    Example:
        >>> family_design(generations=3, family_size=2)
        'grandparents (unsampled) -> 4 children + 2 spouses -> 1-3 children per couple'
    """
    first = f"{2 * family_size} children + {2 * family_size - 2} spouses"
    text = f"grandparents (unsampled) -> {first} -> 1-{2 * family_size - 1} children per couple"
    if generations > 3:
        text += f", {generations - 3} more generation(s), each child with an unrelated spouse"
    return text


SIMULATED_FILES = (
    "cohort.bed",
    "cohort.bim",
    "cohort.fam",
    "pheno.tsv",
    "oracle.tsv",
    "covar.tsv",
    "truth.tsv",
    "populations.tsv",
    "structure.json",
)
"""What :func:`write_simulated_cohort` writes (``structure.json`` last)."""


def write_simulated_cohort(
    out: str | Path,
    n: int = 2000,
    snps: int = 20000,
    traits: int = 4,
    causal: int = 30,
    populations: int = 3,
    chromosomes: int = 5,
    causal_variance: float = 0.2,
    seed: int = 1,
    generations: int = 3,
    family_size: int = 2,
    null_chromosomes: int = 0,
) -> dict[str, Any]:
    """Simulate (see :mod:`flowpheno.simulate`) and write ``cohort.*``, ``pheno.tsv``,
    ``oracle.tsv`` (the traits of ``pheno.tsv`` mapped back by the simulator's own inverse:
    covariate effects removed, then the inverse of its non-Gaussian map; NA where not
    defined), ``covar.tsv``, ``truth.tsv`` (causal SNPs and effects), ``populations.tsv``
    (each individual's population; FID is the family) and ``structure.json`` (counts).
    ``generations`` and ``family_size`` shape the pedigrees (:func:`~flowpheno.simulate.genotypes._family_pedigree`).
    ``n`` is approximate (whole families); ``snps`` SNPs on ``chromosomes`` chromosomes;
    ``causal_variance`` is the share of each latent trait's variance the ``causal`` SNPs
    explain; the last ``null_chromosomes`` chromosomes carry no effect at all (null SNPs for
    calibration; structure.json lists them). Returns the content of ``structure.json``.

    Raises:
        FlowphenoError, ValueError: as :func:`~flowpheno.simulate.genotypes.simulate_genotypes`
            and :func:`~flowpheno.simulate.phenotypes.simulate_phenotypes`.
    """
    out = Path(out)
    genotypes = simulate_genotypes(
        n,
        populations=populations,
        chromosomes=chromosomes,
        snps=snps,
        seed=seed,
        generations=generations,
        family_size=family_size,
    )
    phenotypes = simulate_phenotypes(
        genotypes,
        traits=traits,
        causal=causal,
        causal_variance=causal_variance if causal else 0.0,
        seed=seed + 1000,
        null_chromosomes=null_chromosomes,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_plink(out / "cohort", genotypes.dosage, genotypes.fam, genotypes.bim)
    members = genotypes.fam[["FID", "IID"]].assign(population=[f"pop{p}" for p in genotypes.population])
    tables = (
        ("pheno", phenotypes.pheno),
        ("oracle", phenotypes.oracle),
        ("covar", phenotypes.covar),
        ("truth", phenotypes.truth),
        ("populations", members),
    )
    for name, table in tables:
        with atomic_path(out / f"{name}.tsv") as tmp:
            table.to_csv(tmp, sep="\t", index=False, na_rep="NA", float_format="%.6g")
    structure = {
        "individuals": int(len(genotypes.fam)),
        "snps": int(genotypes.dosage.shape[1]),
        "chromosomes": chromosomes,
        "null_chromosomes": list(phenotypes.null_chromosomes),
        "populations": {f"pop{p}": int((genotypes.population == p).sum()) for p in sorted(set(genotypes.population))},
        "families": int(len(set(genotypes.family))),
        "family_design": family_design(generations, family_size),
        "generations": generations,
        "family_size": family_size,
        "mean_family_size": float(len(genotypes.fam) / len(set(genotypes.family))),
        "traits": traits,
        "causal_snps": causal,
        "causal_variance": causal_variance if causal else 0.0,
        "share_pairs_kinship_ge_0.1": kinship_summary(genotypes.dosage),
        "seed": seed,
    }
    with atomic_path(out / "structure.json") as tmp:
        tmp.write_text(json.dumps(structure, indent=2))
    return structure
