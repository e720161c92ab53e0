# A simulated cohort with known truth (only when the configuration has a `simulate` block).

if SIMULATE:

    rule simulate:
        output:
            multiext(f"{OUT}/cohort/cohort", ".bed", ".bim", ".fam"),
            f"{OUT}/cohort/pheno.tsv",
            f"{OUT}/cohort/covar.tsv",
            f"{OUT}/cohort/truth.tsv",
        params:
            options=" ".join(
                f"--{key.replace('_', '-')} {value}" for key, value in SIMULATE.items() if key != "null"
            )
            + (" --null" if SIMULATE.get("null") else ""),
        log:
            f"{OUT}/logs/simulate.log",
        threads: 1
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "flowpheno simulate --out {OUT}/cohort {params.options} > {log} 2>&1"
