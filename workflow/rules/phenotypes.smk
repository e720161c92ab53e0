# Phenotypes GEMMA tests (one -p file per arm, rows in .fam order): rank-inverse-normal per trait
# after covariates (single, rint_mv), Gaussianized by a flow (flow_iid, flow_kinship), or by the
# simulator's own inverse map (oracle). FIT_ARGS holds the fit options the configuration sets (numbers)
# and fit.extra, which is pasted verbatim (options, not paths); the others keep flowpheno fit's defaults.
# It reaches the shell as a param, so that changing a fit setting re-runs the fits (Snakemake's params trigger).

FIT = config.get("fit") or {}
FIT_ARGS = " ".join(
    options(FIT, {"epochs": "--epochs", "stages": "--stages", "layers": "--layers", "hidden": "--hidden",
                  "batch_size": "--batch-size", "seed": "--seed", "device": "--device"})
    + ([FIT["extra"]] if FIT.get("extra") else [])
)


rule rint:
    input:
        [COHORT["pheno"], FAM] + COVAR_INPUT,
    output:
        f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
    wildcard_constraints:
        method="single|rint_mv",
    params:
        pheno=COHORT["pheno"],
        fam=FAM,
        covar=COVAR_ARG,
        traits=traits,
    log:
        f"{OUT}/logs/rint_{{group}}_{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/rint_{{group}}_{{method}}.tsv"
    threads: 1
    shell:
        "flowpheno gwas rint --pheno {params.pheno:q} {params.covar:q} --traits {params.traits:q} "
        "--fam {params.fam:q} --out {output:q} --overwrite > {log:q} 2>&1"


if "oracle" in METHODS:

    rule oracle:
        input:
            [COHORT["oracle"], FAM] + COVAR_INPUT,
        output:
            f"{OUT}/{{group}}/oracle/pheno.gemma.txt",
        params:
            pheno=COHORT["oracle"],
            fam=FAM,
            covar=COVAR_ARG,
            traits=traits,
        log:
            f"{OUT}/logs/oracle_{{group}}.log",
        benchmark:
            f"{OUT}/benchmarks/oracle_{{group}}.tsv"
        threads: 1
        shell:
            "flowpheno gwas rint --pheno {params.pheno:q} --no-rank {params.covar:q} --traits {params.traits:q} "
            "--fam {params.fam:q} --out {output:q} --overwrite > {log:q} 2>&1"


rule fit_flow:
    input:
        [COHORT["pheno"], FAM] + COVAR_INPUT,
        grm=f"{OUT}/grm/kinship.cXX.txt",
    output:
        pheno=f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
        run=directory(f"{OUT}/{{group}}/{{method}}/run"),
    wildcard_constraints:
        method="flow_iid|flow_kinship",
    params:
        pheno=COHORT["pheno"],
        fam=FAM,
        covar=COVAR_ARG,
        traits=traits,
        mode=lambda wildcards: FLOW_MODES[wildcards.method],
        fit=FIT_ARGS,
    log:
        f"{OUT}/logs/fit_{{group}}_{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/fit_flow_{{group}}_{{method}}.tsv"
    priority: 10  # the longest single jobs: start them before the many short GEMMA jobs
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    shell:
        "(flowpheno fit --pheno {params.pheno:q} {params.covar:q} --grm {input.grm:q} --grm-ids {params.fam:q} "
        "--traits {params.traits:q} --mode {params.mode} {params.fit} --out {output.run:q} --threads {threads} --overwrite && "
        "flowpheno transform --model {output.run:q} --pheno {params.pheno:q} {params.covar:q} --format gemma "
        "--fam {params.fam:q} --out {output.pheno:q} --device cpu --threads {threads} --overwrite) > {log:q} 2>&1"
