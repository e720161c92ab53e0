"""Simulated cohorts with known truth: msprime genotypes through real pedigrees, and phenotypes."""

from flowpheno.simulate.genotypes import SimulatedGenotypes, simulate_genotypes
from flowpheno.simulate.pedigree import families_kinship, pedigree_kinship
from flowpheno.simulate.phenotypes import SimulatedPhenotypes, simulate_phenotypes

__all__ = [
    "SimulatedGenotypes",
    "SimulatedPhenotypes",
    "families_kinship",
    "pedigree_kinship",
    "simulate_genotypes",
    "simulate_phenotypes",
]
