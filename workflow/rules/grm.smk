# One centred GRM (GEMMA -gk 1) shared by every method.


rule gemma_grm:
    input:
        BED,
    output:
        f"{OUT}/grm/kinship.cXX.txt",
    params:
        bfile=COHORT["bfile"],
    log:
        f"{OUT}/logs/gemma_grm.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "flowpheno gwas grm --bfile {params.bfile:q} --out {output:q} --overwrite > {log:q} 2>&1"
