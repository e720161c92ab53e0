# One centred GRM (GEMMA -gk 1) shared by every method.


rule gemma_grm:
    input:
        BED,
    output:
        f"{OUT}/grm/kinship.cXX.txt",
    log:
        f"{OUT}/logs/gemma_grm.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "flowpheno gwas grm --bfile {COHORT[bfile]} --out {output} > {log} 2>&1"
