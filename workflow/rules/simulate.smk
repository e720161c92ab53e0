# A simulated cohort with known truth (only when the configuration has a `simulate` block).


if SIMULATE:

    rule simulate:
        output:
            multiext(f"{OUT}/cohort/cohort", ".bed", ".bim", ".fam"),
            f"{OUT}/cohort/pheno.tsv",
            f"{OUT}/cohort/covar.tsv",
            f"{OUT}/cohort/truth.tsv",
            COHORT["oracle"],
        params:
            out=output_folder,
            options=simulate_options(SIMULATE),
        log:
            f"{OUT}/logs/simulate.log",
        benchmark:
            f"{OUT}/benchmarks/simulate.tsv"
        threads: 1
        conda:
            "../envs/flowpheno.yaml"
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "flowpheno simulate --out {params.out:q} {params.options:q} --threads {threads} > {log:q} 2>&1"
