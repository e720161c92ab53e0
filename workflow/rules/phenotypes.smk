# Phenotypes GEMMA tests (one -p file per arm, rows in .fam order): rank-inverse-normal per trait
# after covariates (single, rint_mv), Gaussianized by a flow (flow_iid, flow_kinship), or by the
# simulator's own inverse map (oracle). FIT_ARGS (common.smk) holds the flowpheno fit options the `fit:`
# keys set, one word per item; the others keep flowpheno fit's defaults. They reach the shell as a param,
# so that changing a fit setting re-runs the fits (Snakemake's params trigger).


rule rint:
    input:
        COVAR_INPUT,
        pheno=COHORT["pheno"],
        fam=FAM,
    output:
        f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
    wildcard_constraints:
        method="single|rint_mv",
    params:
        covar=COVAR_ARG,
        traits=traits,
    log:
        f"{OUT}/logs/rint_{{group}}_{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/rint_{{group}}_{{method}}.tsv"
    threads: 1
    conda:
        "../envs/flowpheno.yaml"
    shell:
        "flowpheno gwas rint --pheno {input.pheno:q} {params.covar:q} --traits {params.traits:q} "
        "--fam {input.fam:q} --out {output:q} --overwrite > {log:q} 2>&1"


if "oracle" in METHODS:

    rule oracle:
        input:
            COVAR_INPUT,
            pheno=COHORT["oracle"],
            fam=FAM,
        output:
            f"{OUT}/{{group}}/oracle/pheno.gemma.txt",
        params:
            covar=COVAR_ARG,
            traits=traits,
        log:
            f"{OUT}/logs/oracle_{{group}}.log",
        benchmark:
            f"{OUT}/benchmarks/oracle_{{group}}.tsv"
        threads: 1
        conda:
            "../envs/flowpheno.yaml"
        shell:
            "flowpheno gwas rint --pheno {input.pheno:q} --no-rank {params.covar:q} --traits {params.traits:q} "
            "--fam {input.fam:q} --out {output:q} --overwrite > {log:q} 2>&1"


rule fit_flow:
    input:
        COVAR_INPUT,
        pheno=COHORT["pheno"],
        fam=FAM,
        grm=f"{OUT}/grm/kinship.cXX.txt",
    output:
        pheno=f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
        run=directory(f"{OUT}/{{group}}/{{method}}/run"),
    wildcard_constraints:
        method="flow_iid|flow_kinship",
    params:
        covar=COVAR_ARG,
        traits=traits,
        mode=lambda wildcards: FLOW_MODES[wildcards.method],
        fit=lambda wildcards: FIT_ARGS[wildcards.method],
    log:
        f"{OUT}/logs/fit_{{group}}_{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/fit_flow_{{group}}_{{method}}.tsv"
    priority: 10  # the longest single jobs: start them before the many short GEMMA jobs
    threads: 2
    conda:
        "../envs/flowpheno.yaml"
    resources:
        mem_mb=16000,
        runtime=240,
    shell:
        "(flowpheno fit --pheno {input.pheno:q} {params.covar:q} --grm {input.grm:q} --grm-ids {input.fam:q} "
        "--traits {params.traits:q} --mode {params.mode} {params.fit:q} --out {output.run:q} --threads {threads} --overwrite && "
        "flowpheno transform --model {output.run:q} --pheno {input.pheno:q} {params.covar:q} --format gemma "
        "--fam {input.fam:q} --out {output.pheno:q} --device cpu --threads {threads} --overwrite) > {log:q} 2>&1"
