"""Make the embedded example cohort under examples/ (run from the repository root).

    python examples/make_example.py

About 1,000 individuals in three-generation families from three populations
(msprime genotypes through the pedigree), 5,000 SNPs on two chromosomes, four
non-Gaussian traits with covariates (age, sex, batch) and 1% missing values.
Deterministic for a given --seed. The kinship is not stored: `flowpheno grm`
recomputes it in a second (see the README quick start).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowpheno.io.atomic import atomic_path
from flowpheno.io.plink import write_plink
from flowpheno.simulate import simulate_genotypes, simulate_phenotypes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--snps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    genotypes = simulate_genotypes(args.n, snps=args.snps, seed=args.seed)
    phenotypes = simulate_phenotypes(genotypes, traits=4, causal=10, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_plink(args.out / "cohort", genotypes.dosage, genotypes.fam, genotypes.bim)
    for name, table in (("pheno", phenotypes.pheno), ("covar", phenotypes.covar), ("truth", phenotypes.truth)):
        with atomic_path(args.out / f"{name}.tsv") as tmp:
            table.to_csv(tmp, sep="\t", index=False, na_rep="NA", float_format="%.6g")
    structure = {
        "individuals": int(len(genotypes.fam)),
        "snps": int(genotypes.dosage.shape[1]),
        "populations": {f"pop{p}": int((genotypes.population == p).sum()) for p in sorted(set(genotypes.population))},
        "families": int(len(set(genotypes.family))),
        "seed": args.seed,
        "generator": "examples/make_example.py",
    }
    with atomic_path(args.out / "structure.json") as tmp:
        tmp.write_text(json.dumps(structure, indent=2))
    print(json.dumps(structure))


if __name__ == "__main__":
    main()
