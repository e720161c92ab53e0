# A simulated cohort with known truth (only when the configuration has a `simulate` block).


def simulate_options(block):
    """`flowpheno simulate` options from the `simulate` block, one list item per word."""
    options = []
    for key, value in block.items():
        if key != "null":
            options += ["--" + key.replace("_", "-"), str(value)]
    return options + (["--null"] if block.get("null") else [])


if SIMULATE:

    rule simulate:
        output:
            multiext(f"{OUT}/cohort/cohort", ".bed", ".bim", ".fam"),
            f"{OUT}/cohort/pheno.tsv",
            f"{OUT}/cohort/covar.tsv",
            f"{OUT}/cohort/truth.tsv",
            COHORT["oracle"],
        params:
            out=f"{OUT}/cohort",
            options=simulate_options(SIMULATE),
        log:
            f"{OUT}/logs/simulate.log",
        benchmark:
            f"{OUT}/benchmarks/simulate.tsv"
        threads: 1
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "flowpheno simulate --out {params.out:q} {params.options:q} --threads {threads} > {log:q} 2>&1"
