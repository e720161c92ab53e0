"""Genotypes of related individuals from structured populations, simulated with msprime.

Families (grandparents, their children, spouses, grandchildren: siblings, first
cousins, parent-offspring pairs; optionally deeper and larger) are built as an msprime pedigree; msprime simulates
recombination through it exactly (``fixed_pedigree``) and completes the ancestry
under a demography of populations split from one ancestor, which gives structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class SimulatedGenotypes:
    """Simulated genotypes of ``n`` individuals at ``m`` SNPs, ready for :func:`~flowpheno.io.plink.write_plink`.

    ``dosage``: ``(n, m)`` copies (0, 1, 2) of the ``.bim`` ``a0`` allele; ``fam``: the ``n``
    ``.fam`` rows (FID = family); ``bim``: the ``m`` ``.bim`` rows (positions in bp);
    ``population``: ``(n,)`` population index; ``family``: ``(n,)`` family ID (as FID).
    """

    dosage: np.ndarray
    fam: pd.DataFrame
    bim: pd.DataFrame
    population: np.ndarray
    family: np.ndarray


def _demography(populations: int, split_time: float, population_size: float):  # noqa: ANN202
    import msprime

    demography = msprime.Demography()
    for index in range(populations):
        demography.add_population(name=f"pop{index}", initial_size=population_size)
    demography.add_population(name="ancestral", initial_size=population_size)
    demography.add_population_split(
        time=split_time, derived=[f"pop{i}" for i in range(populations)], ancestral="ancestral"
    )
    return demography


def _family_pedigree(
    builder,
    population: int,
    rng: np.random.Generator,
    generations: int = 3,
    family_size: int = 2,  # noqa: ANN001
) -> list[tuple[int, str]]:
    """One family over ``generations`` generations; returns (pedigree individual, role) for the sampled members.

    Two unsampled founder couples have ``family_size`` children each; the first child of
    one couple marries the first of the other (their children are cousins of both sides),
    every other child marries an unrelated spouse. Each couple has 1 to ``2 family_size - 1``
    children (mean ``family_size``). With more than 3 generations every child of the
    previous generation marries an unrelated spouse and has children in turn, so families
    grow deeper and larger (second cousins, avuncular pairs, ...). ``generations = 3``,
    ``family_size = 2`` is the classic design: 4 children + 2 spouses -> 1-3 grandchildren
    per couple.
    """
    add = builder.add_individual
    top = generations - 1
    grand_a = [add(time=top, population=population, is_sample=False) for _ in range(2)]
    grand_b = [add(time=top, population=population, is_sample=False) for _ in range(2)]
    child_a = [add(time=top - 1, parents=grand_a, population=population, is_sample=True) for _ in range(family_size)]
    child_b = [add(time=top - 1, parents=grand_b, population=population, is_sample=True) for _ in range(family_size)]
    married_out = child_a[1:] + child_b[1:]
    spouses = [add(time=top - 1, population=population, is_sample=True) for _ in married_out]
    members = [(i, "parent") for i in child_a + child_b + spouses]
    couples = [(child_a[0], child_b[0]), *zip(married_out, spouses, strict=True)]
    for time in range(top - 2, -1, -1):
        children = []
        for mother, father in couples:
            for _ in range(int(rng.integers(1, 2 * family_size))):
                children.append(add(time=time, parents=[mother, father], population=population, is_sample=True))
        role = "child" if time == 0 else "parent"
        members += [(i, role) for i in children]
        if time > 0:  # every child marries an unrelated spouse of its generation
            partners = [add(time=time, population=population, is_sample=True) for _ in children]
            members += [(i, "parent") for i in partners]
            couples = list(zip(children, partners, strict=True))
    return members


def simulate_genotypes(
    n_target: int = 1000,
    populations: int = 3,
    chromosomes: int = 2,
    chromosome_length: float = 10e6,
    snps: int = 5000,
    min_maf: float = 0.05,
    split_time: float = 400,
    population_size: float = 5000,
    recombination_rate: float = 1e-8,
    mutation_rate: float = 1.5e-8,
    seed: int = 1,
    generations: int = 3,
    family_size: int = 2,
) -> SimulatedGenotypes:
    """About ``n_target`` genotyped individuals in families of ``generations`` generations
    (:func:`_family_pedigree`; the last family is cut at ``n_target``).

    SNPs are thinned at random to ``snps`` among those with MAF >= ``min_maf``, keeping
    physical order, so LD is realistic and files stay small. ``chromosome_length`` is in bp,
    ``split_time`` in generations, ``recombination_rate`` and ``mutation_rate`` per bp per
    generation (msprime's units; msprime ``sim_ancestry`` with a ``fixed_pedigree`` model).

    Raises:
        ValueError: ``generations < 3`` or ``family_size < 1``.
    """
    import msprime

    if generations < 3 or family_size < 1:
        raise ValueError(f"generations must be >= 3 and family_size >= 1, got {generations} and {family_size}")
    rng = np.random.default_rng(seed)
    demography = _demography(populations, split_time, population_size)
    builder = msprime.PedigreeBuilder(demography=demography)
    members: list[tuple[int, str, int, int]] = []
    family = 0
    while len(members) < n_target:
        population = int(rng.integers(populations))
        members += [
            (ind, role, population, family)
            for ind, role in _family_pedigree(builder, population, rng, generations, family_size)
        ]
        family += 1
    members = members[:n_target]
    pedigree = builder.finalise(sequence_length=chromosome_length)
    sampled = np.array([m[0] for m in members])

    dosages, bims = [], []
    for chromosome in range(1, chromosomes + 1):
        chrom_seed = int(rng.integers(1, 2**31 - 1))
        ts = msprime.sim_ancestry(
            initial_state=pedigree,
            model="fixed_pedigree",
            recombination_rate=recombination_rate,
            random_seed=chrom_seed,
        )
        ts = msprime.sim_ancestry(
            initial_state=ts, demography=demography, recombination_rate=recombination_rate, random_seed=chrom_seed + 1
        )
        ts = msprime.sim_mutations(
            ts, rate=mutation_rate, model=msprime.BinaryMutationModel(), random_seed=chrom_seed + 2
        )
        haplotypes = ts.genotype_matrix()  # sites x sample nodes
        node_individual = ts.tables.nodes.individual[ts.samples()]
        order = np.argsort(node_individual, kind="stable")
        by_individual = haplotypes[:, order].reshape(haplotypes.shape[0], -1, 2).sum(axis=2)
        individuals = np.unique(node_individual)
        position = pd.Index(individuals).get_indexer(sampled)
        dosage = by_individual[:, position].T.astype(np.float32)
        positions = np.array([site.position for site in ts.sites()])
        dosages.append(dosage)
        bims.append(pd.DataFrame({"chrom": str(chromosome), "pos": np.floor(positions).astype(int) + 1}))
    dosage = np.concatenate(dosages, axis=1)
    bim = pd.concat(bims, ignore_index=True)
    frequency = dosage.mean(axis=0) / 2
    common = np.flatnonzero((np.minimum(frequency, 1 - frequency) >= min_maf) & ~bim["pos"].duplicated().to_numpy())
    chosen = np.sort(rng.choice(common, size=min(snps, len(common)), replace=False))
    dosage, bim = dosage[:, chosen], bim.iloc[chosen].reset_index(drop=True)
    bim = bim.assign(snp=[f"rs{c}_{p}" for c, p in zip(bim["chrom"], bim["pos"], strict=True)], cm=0.0, a0="A", a1="G")
    family_ids = np.array([f"fam{m[3]:04d}" for m in members])
    fam = pd.DataFrame(
        {
            "FID": family_ids,
            "IID": [f"ind{i:05d}" for i in range(len(members))],
            "PAT": "0",
            "MAT": "0",
            "SEX": rng.integers(1, 3, len(members)).astype(str),
            "PHENO": "-9",
        }
    )
    return SimulatedGenotypes(
        dosage, fam, bim[["chrom", "snp", "cm", "pos", "a0", "a1"]], np.array([m[2] for m in members]), family_ids
    )
