# GEMMA -lmm 3: multivariate over the group's traits (flows), or per trait with min p x d (single).


rule gemma_assoc:
    input:
        BED,
        pheno=f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
        grm=f"{OUT}/grm/kinship.cXX.txt",
    output:
        f"{OUT}/{{group}}/{{method}}/assoc.tsv",
    params:
        bfile=COHORT["bfile"],
        columns=columns,
        per_trait=lambda wildcards: ["--per-trait"] if wildcards.method == "single" else [],
    log:
        f"{OUT}/logs/gemma_{{group}}_{{method}}.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "flowpheno gwas assoc --bfile {params.bfile:q} --kinship {input.grm:q} --pheno {input.pheno:q} "
        "--columns {params.columns:q} {params.per_trait:q} --out {output:q} --overwrite > {log:q} 2>&1"
