"""Non-Gaussian, pleiotropic, relatedness-correlated phenotypes with known truth.

Latent Gaussian traits ``U`` = causal SNP effects (some SNPs act on several traits)
+ a polygenic background (many small effects, so related and same-population
individuals are correlated) + noise; then a fixed invertible map gives skewed,
heavy-tailed marginals and crescent-shaped couplings between traits that per-trait
rank normalisation cannot undo; finally covariate effects (age, sex, batch), added on the
observed scale. The ``oracle`` table undoes both exactly: observed minus the known
covariate effects, then :func:`inverse_nonlinear_map` (the best any Gaussianizing map
can do; the ``oracle`` arm of the GWAS comparison).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowpheno.errors import FlowphenoError
from flowpheno.simulate.genotypes import SimulatedGenotypes


@dataclass
class SimulatedPhenotypes:
    """Tables ready to write: ``pheno`` (FID, IID, ``trait1 .. traitd``; NaN missing),
    ``covar`` (FID, IID, age, sex, batch) and the causal ``truth`` (snp, chrom, pos and one
    ``effect_<trait>`` column per trait); ``latent``: the (n, d) latent Gaussian traits."""

    pheno: pd.DataFrame
    covar: pd.DataFrame
    truth: pd.DataFrame
    latent: np.ndarray
    oracle: pd.DataFrame
    """FID, IID and the traits of ``pheno`` mapped back to the latent scale by the simulator's
    own inverse (:func:`oracle_latent`); NaN where the observed trait, or the trait its
    map is coupled to, is missing."""
    null_chromosomes: tuple[str, ...] = ()
    """The chromosomes (``.bim`` names) that carry no causal and no polygenic SNP."""


def nonlinear_map(latent: np.ndarray) -> np.ndarray:
    """The invertible map from latent Gaussian traits to observed ones (traits 5+ repeat the pattern).

    ``latent``: (n, d); returns (n, d). Trait 1 is log-normal, trait 2 a crescent on trait 1,
    trait 3 heavy-tailed and coupled to trait 2, trait 4 heteroscedastic in trait 3.

    Example:
        >>> latent = np.random.default_rng(0).normal(size=(5, 4))
        >>> np.allclose(inverse_nonlinear_map(nonlinear_map(latent)), latent)
        True
    """
    u = latent
    y = np.empty_like(u)
    for j in range(u.shape[1]):
        anchor = u[:, j - 1] if j % 4 else u[:, j]
        kind = j % 4
        if kind == 0:
            y[:, j] = np.exp(0.6 * u[:, j])  # log-normal skew
        elif kind == 1:
            y[:, j] = u[:, j] + 0.9 * (anchor**2 - 1)  # crescent on the previous trait
        elif kind == 2:
            y[:, j] = np.sinh(0.9 * u[:, j]) + 0.5 * anchor**2  # heavy tails + coupling
        else:
            y[:, j] = u[:, j] * np.exp(0.35 * anchor)  # heteroscedastic
    return y


def _anchor_index(j: int) -> int:
    """The trait whose latent value enters trait ``j``'s map: itself every 4th trait, else the previous one."""
    return j - 1 if j % 4 else j


def inverse_nonlinear_map(observed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`nonlinear_map`: latent traits from observed ones (before covariate effects).

    ``observed``: (n, d). Trait j's map involves the latent value of trait j - 1 (except
    every 4th trait), so traits are inverted in order; a row whose trait j or the trait its
    map is coupled to is NaN gives NaN for trait j (the latent is not defined there), and a
    log-normal value <= 0 (outside the map's range) gives NaN.
    """
    y = np.asarray(observed, dtype=float)
    u = np.full_like(y, np.nan)
    for j in range(y.shape[1]):
        kind = j % 4
        anchor = u[:, _anchor_index(j)]
        if kind == 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                u[:, j] = np.where(y[:, j] > 0, np.log(np.where(y[:, j] > 0, y[:, j], 1.0)) / 0.6, np.nan)
        elif kind == 1:
            u[:, j] = y[:, j] - 0.9 * (anchor**2 - 1)
        elif kind == 2:
            u[:, j] = np.arcsinh(y[:, j] - 0.5 * anchor**2) / 0.9
        else:
            u[:, j] = y[:, j] * np.exp(-0.35 * anchor)
    return u


BATCH_EFFECTS = {"b1": 0.0, "b2": 0.3, "b3": -0.2}


def covariate_effects(age: np.ndarray, sex: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """(n,) shift added to every observed trait: ``0.01 (age - 50) + 0.2 [sex = 2] + batch``
    (batch b1 0, b2 +0.3, b3 -0.2). ``age`` (years), ``sex`` (PLINK code: 1 male, 2 female)
    and ``batch`` are (n,).

    Example:
        >>> covariate_effects(np.array([50.0, 60.0]), np.array([1, 2]), np.array(["b1", "b2"]))
        array([0. , 0.6])
    """
    batch_effect = pd.Series(batch).map(BATCH_EFFECTS).to_numpy(dtype=float)
    return 0.01 * (np.asarray(age, dtype=float) - 50) + 0.2 * (np.asarray(sex) == 2) + batch_effect


def oracle_latent(observed: np.ndarray, age: np.ndarray, sex: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The simulator's own Gaussianizing map of observed traits (n, d): the known covariate
    effects removed, then :func:`inverse_nonlinear_map`. On the simulated values it returns
    the latent traits exactly (up to rounding) wherever they are defined."""
    return inverse_nonlinear_map(np.asarray(observed, dtype=float) - covariate_effects(age, sex, batch)[:, None])


def _standardise(matrix: np.ndarray) -> np.ndarray:
    sd = matrix.std(axis=0)
    return (matrix - matrix.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def simulate_phenotypes(
    genotypes: SimulatedGenotypes,
    traits: int = 4,
    causal: int = 10,
    causal_variance: float = 0.10,
    polygenic_variance: float = 0.40,
    polygenic_snps: int = 1000,
    pleiotropy: float = 0.5,
    population_variance: float = 0.05,
    missing_rate: float = 0.01,
    seed: int = 1,
    null_chromosomes: int = 0,
) -> SimulatedPhenotypes:
    """Phenotypes for the individuals of ``genotypes`` (see module docstring).

    ``causal_variance``, ``polygenic_variance`` and ``population_variance`` (mean shifts
    between populations) are shares of each latent trait's variance; each causal SNP
    acts on one trait, and on each other trait with probability ``pleiotropy``.
    ``polygenic_snps`` standardised SNPs carry the polygenic background; ``missing_rate``
    is the share of trait values set missing at random. The last ``null_chromosomes``
    chromosomes carry no causal and no polygenic SNP: their SNPs are null SNPs, associated
    with no trait except through population structure and relatedness, so the lambda GC of
    an association test over them measures calibration alone (with a polygenic background,
    every SNP linked to a polygenic SNP is truly associated, and a genome-wide lambda GC
    mixes calibration with polygenic signal; Loh et al. 2015, Nat Genet 47:284, BOLT-LMM,
    scored calibration on such null chromosomes).

    Raises:
        FlowphenoError: no more SNPs than ``causal`` outside the null chromosomes, or
            ``null_chromosomes`` leaves no chromosome for the effects.
        ValueError: the variance shares sum to 1 or more (no room for noise).
    """
    rng = np.random.default_rng(seed)
    n, m = genotypes.dosage.shape
    standardised = _standardise(genotypes.dosage.astype(np.float64))
    chromosomes = list(dict.fromkeys(genotypes.bim["chrom"]))  # in file order
    if not 0 <= null_chromosomes < len(chromosomes):
        raise FlowphenoError(
            f"null_chromosomes={null_chromosomes}: give 0 to {len(chromosomes) - 1} for {len(chromosomes)} "
            "chromosomes (at least one must carry the effects)"
        )
    effect_free = chromosomes[len(chromosomes) - null_chromosomes :]
    eligible = np.flatnonzero(~genotypes.bim["chrom"].isin(effect_free).to_numpy())
    if len(eligible) <= causal:
        raise FlowphenoError(
            f"{len(eligible)} SNPs simulated outside the null chromosomes for {causal} causal SNPs; ask for more "
            "SNPs (--snps), fewer causal ones (--causal) or fewer null chromosomes (--null-chromosomes)"
        )
    # small test cohorts: the background uses every other SNP
    polygenic_snps = min(polygenic_snps, len(eligible) - causal)
    chosen = eligible[rng.choice(len(eligible), size=causal + polygenic_snps, replace=False)]
    causal_snps, polygenic = chosen[:causal], chosen[causal:]

    genetic_correlation = np.full((traits, traits), 0.4) + 0.6 * np.eye(traits)
    background = standardised[:, polygenic] @ (
        rng.normal(size=(len(polygenic), traits)) @ np.linalg.cholesky(genetic_correlation).T
    )
    background = _standardise(background) * np.sqrt(polygenic_variance)

    effects = np.zeros((causal, traits))
    for k in range(causal):
        acts_on = rng.random(traits) < pleiotropy
        acts_on[rng.integers(traits)] = True
        effects[k, acts_on] = rng.choice([-1.0, 1.0], size=acts_on.sum()) * rng.uniform(0.5, 1.0, size=acts_on.sum())
    causal_part = standardised[:, causal_snps] @ effects if causal else np.zeros((n, traits))
    if causal:
        causal_part = _standardise(causal_part) * np.sqrt(causal_variance)

    offsets = rng.normal(size=(int(genotypes.population.max()) + 1, traits))
    population_part = _standardise(offsets[genotypes.population]) * np.sqrt(population_variance)

    noise_variance = 1.0 - polygenic_variance - causal_variance - population_variance
    if noise_variance <= 0:
        raise ValueError("causal, polygenic and population variance shares must sum to less than 1")
    noise_correlation = np.full((traits, traits), 0.2) + 0.8 * np.eye(traits)
    noise = rng.normal(size=(n, traits)) @ np.linalg.cholesky(noise_correlation).T * np.sqrt(noise_variance)
    latent = _standardise(background + causal_part + population_part + noise)
    observed = nonlinear_map(latent)

    age = rng.uniform(20, 80, n).round(1)
    sex = genotypes.fam["SEX"].astype(int).to_numpy()
    batch = rng.choice(["b1", "b2", "b3"], size=n)
    observed += covariate_effects(age, sex, batch)[:, None]
    observed[rng.random(observed.shape) < missing_rate] = np.nan
    oracle = oracle_latent(observed, age, sex, batch)

    names = [f"trait{j + 1}" for j in range(traits)]
    ids = genotypes.fam[["FID", "IID"]].reset_index(drop=True)
    pheno = pd.concat([ids, pd.DataFrame(observed, columns=names)], axis=1)
    covar = ids.assign(age=age, sex=sex, batch=batch)
    bim = genotypes.bim.iloc[causal_snps].reset_index(drop=True)
    truth = pd.concat(
        [bim[["snp", "chrom", "pos"]], pd.DataFrame(effects, columns=[f"effect_{t}" for t in names])], axis=1
    )
    oracle_table = pd.concat([ids, pd.DataFrame(oracle, columns=names)], axis=1)
    return SimulatedPhenotypes(pheno, covar, truth, latent, oracle_table, tuple(effect_free))
