# Phenotypes GEMMA tests: rank-inverse-normal per trait (single), or Gaussianized by a flow.

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
        traits=traits,
    log:
        f"{OUT}/logs/rint_{{group}}.log",
    threads: 1
    shell:
        "flowpheno gwas rint --pheno {COHORT[pheno]} {COVAR_ARG} --traits {params.traits} "
        "--fam {FAM} --out {output} > {log} 2>&1"


rule fit_flow:
    input:
        [COHORT["pheno"], FAM, f"{OUT}/grm/kinship.cXX.txt"] + COVAR_INPUT,
    output:
        pheno=f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt",
        run=directory(f"{OUT}/{{group}}/{{method}}/run"),
    wildcard_constraints:
        method="flow_iid|flow_kinship",
    params:
        traits=traits,
        mode=lambda wildcards: FLOW_MODES[wildcards.method],
    log:
        f"{OUT}/logs/fit_{{group}}_{{method}}.log",
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    shell:
        "(flowpheno fit --pheno {COHORT[pheno]} {COVAR_ARG} --grm {OUT}/grm/kinship.cXX.txt --grm-ids {FAM} "
        "--traits {params.traits} --mode {params.mode} {FIT_ARGS} --out {output.run} --quiet && "
        "flowpheno transform --model {output.run} --pheno {COHORT[pheno]} {COVAR_ARG} --format gemma "
        "--fam {FAM} --out {output.pheno} --device cpu) > {log} 2>&1"
