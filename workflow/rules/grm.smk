# The fileset every step reads, the centred GRM of all its SNPs (GEMMA -gk 1: the flows' kinship, and
# the association's without LOCO) and, with gwas.loco, one GRM per left-out chromosome.


checkpoint prepare_genotypes:
    input:
        multiext(COHORT["bfile"], ".bed", ".bim", ".fam"),
    output:
        bed=f"{GENOTYPES}.bed",
        bim=f"{GENOTYPES}.bim",
        fam=f"{GENOTYPES}.fam",
        excluded=f"{GENOTYPES}.excluded.tsv",
    params:
        bfile=plink_prefix,
        out=lambda wildcards, output: output.bed.removesuffix(".bed"),
    log:
        f"{OUT}/logs/prepare_genotypes.log",
    benchmark:
        f"{OUT}/benchmarks/prepare_genotypes.tsv"
    threads: 1
    conda:
        "../envs/flowpheno.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "flowpheno gwas prepare --bfile {params.bfile:q} --out {params.out:q} --threads {threads} --overwrite > {log:q} 2>&1"


rule gemma_grm:
    input:
        BED,
    output:
        f"{OUT}/grm/kinship.cXX.txt",
    params:
        bfile=plink_prefix,
    log:
        f"{OUT}/logs/gemma_grm.log",
    benchmark:
        f"{OUT}/benchmarks/gemma_grm.tsv"
    threads: 1
    conda:
        "../envs/flowpheno.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "flowpheno gwas grm --bfile {params.bfile:q} --out {output:q} --threads {threads} --overwrite > {log:q} 2>&1"


rule gemma_grm_loco:
    input:
        BED,
    output:
        f"{OUT}/grm/loco/{{chrom}}.cXX.txt",
    params:
        bfile=plink_prefix,
    log:
        f"{OUT}/logs/gemma_grm_loco_{{chrom}}.log",
    benchmark:
        f"{OUT}/benchmarks/gemma_grm_loco_{{chrom}}.tsv"
    threads: 1
    conda:
        "../envs/flowpheno.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "flowpheno gwas grm --bfile {params.bfile:q} --loco {wildcards.chrom:q} --out {output:q} --threads {threads} --overwrite > {log:q} 2>&1"
