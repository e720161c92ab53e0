# GEMMA -lmm 3: multivariate over the group's traits (rint_mv, flows, oracle), or per trait with
# min p x d (single). With gwas.loco, one run per chromosome with the GRM that leaves it out, gathered
# into the arm's assoc.tsv; without, one run over every SNP with the GRM of all of them.


if LOCO:

    rule gemma_assoc_chromosome:
        input:
            BED,
            COVAR_INPUT if GEMMA_COVAR_ARG else [],
            pheno=f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
            grm=f"{OUT}/grm/loco/{{chrom}}.cXX.txt",
        output:
            f"{OUT}/{{group}}/{{method}}/loco/{{chrom}}.assoc.tsv",
        params:
            bfile=plink_prefix,
            columns=columns,
            per_trait=per_trait,
            covar=GEMMA_COVAR_ARG,
        log:
            f"{OUT}/logs/gemma_{{group}}_{{method}}_{{chrom}}.log",
        benchmark:
            f"{OUT}/benchmarks/gemma_assoc_{{group}}_{{method}}_{{chrom}}.tsv"
        threads: 1
        conda:
            "../envs/flowpheno.yaml"
        resources:
            mem_mb=8000,
            runtime=240,
        shell:
            "flowpheno gwas assoc --bfile {params.bfile:q} --kinship {input.grm:q} --pheno {input.pheno:q} "
            "--columns {params.columns:q} {params.per_trait:q} {params.covar:q} --chr {wildcards.chrom:q} "
            "--out {output:q} --threads {threads} --overwrite > {log:q} 2>&1"

    rule gather_assoc:
        input:
            BED,
            parts=chromosome_tables,
        output:
            f"{OUT}/{{group}}/{{method}}/assoc.tsv",
        params:
            bfile=plink_prefix,
        log:
            f"{OUT}/logs/gather_{{group}}_{{method}}.log",
        benchmark:
            f"{OUT}/benchmarks/gather_assoc_{{group}}_{{method}}.tsv"
        threads: 1
        conda:
            "../envs/flowpheno.yaml"
        shell:
            "flowpheno gwas gather {input.parts:q} --bfile {params.bfile:q} --out {output:q} --overwrite > {log:q} 2>&1"

else:

    rule gemma_assoc:
        input:
            BED,
            COVAR_INPUT if GEMMA_COVAR_ARG else [],
            pheno=f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
            grm=f"{OUT}/grm/kinship.cXX.txt",
        output:
            f"{OUT}/{{group}}/{{method}}/assoc.tsv",
        params:
            bfile=plink_prefix,
            columns=columns,
            per_trait=per_trait,
            covar=GEMMA_COVAR_ARG,
        log:
            f"{OUT}/logs/gemma_{{group}}_{{method}}.log",
        benchmark:
            f"{OUT}/benchmarks/gemma_assoc_{{group}}_{{method}}.tsv"
        threads: 1
        conda:
            "../envs/flowpheno.yaml"
        resources:
            mem_mb=8000,
            runtime=240,
        shell:
            "flowpheno gwas assoc --bfile {params.bfile:q} --kinship {input.grm:q} --pheno {input.pheno:q} "
            "--columns {params.columns:q} {params.per_trait:q} {params.covar:q} --out {output:q} --threads {threads} --overwrite > {log:q} 2>&1"
