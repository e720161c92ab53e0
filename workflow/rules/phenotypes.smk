# Phenotypes GEMMA tests: rank-inverse-normal per trait (single), or Gaussianized by a flow.
# FIT_ARGS holds numbers and fit.extra, which is pasted verbatim (options, not paths).

FIT = config["fit"]
FIT_ARGS = (
    f"--epochs {FIT['epochs']} --stages {FIT['stages']} --layers {FIT['layers']} --hidden {FIT['hidden']} "
    f"--batch-size {FIT['batch_size']} --seed {FIT['seed']} --device {FIT['device']} {FIT.get('extra', '')}"
)


rule rint:
    input:
        [COHORT["pheno"], FAM] + COVAR_INPUT,
    output:
        f"{OUT}/{{group}}/single/pheno.gemma.txt",
    params:
        pheno=COHORT["pheno"],
        fam=FAM,
        covar=COVAR_ARG,
        traits=traits,
    log:
        f"{OUT}/logs/rint_{{group}}.log",
    threads: 1
    shell:
        "flowpheno gwas rint --pheno {params.pheno:q} {params.covar:q} --traits {params.traits:q} "
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
    log:
        f"{OUT}/logs/fit_{{group}}_{{method}}.log",
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    shell:
        "(flowpheno fit --pheno {params.pheno:q} {params.covar:q} --grm {input.grm:q} --grm-ids {params.fam:q} "
        "--traits {params.traits:q} --mode {params.mode} {FIT_ARGS} --out {output.run:q} --overwrite --quiet && "
        "flowpheno transform --model {output.run:q} --pheno {params.pheno:q} {params.covar:q} --format gemma "
        "--fam {params.fam:q} --out {output.pheno:q} --device cpu --overwrite) > {log:q} 2>&1"
