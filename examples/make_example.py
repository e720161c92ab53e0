"""Make the embedded example cohort under examples/ (run from the repository root).

    python examples/make_example.py

About 1,000 individuals in three-generation families from three populations
(msprime genotypes simulated through the pedigree), 5,000 SNPs on two chromosomes,
four non-Gaussian traits with 10 pleiotropic causal SNPs, covariates (age, sex,
batch) and 1% missing values. Deterministic for a given --seed. The kinship is not
stored: `flowpheno grm` recomputes it in seconds (see the README quick start).
Equivalent to `flowpheno simulate --out examples --n 1000 --snps 5000 --chromosomes 2
--causal 10 --causal-variance 0.1 --seed 7`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowpheno.simulate.cohort import write_simulated_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    structure = write_simulated_cohort(
        args.out, n=1000, snps=5000, traits=4, causal=10, chromosomes=2, causal_variance=0.1, seed=args.seed
    )
    print(json.dumps(structure, indent=2))


if __name__ == "__main__":
    main()
