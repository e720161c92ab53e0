# flowpheno GWAS comparison: flow training -> GEMMA mvLMM -> PLINK clumping -> loci counts,
# against rank-inverse-normal baselines (univariate and mvLMM) and an iid flow.
#
#   snakemake gwas_all -c2                                        # the embedded example (config/example.yaml)
#   snakemake gwas_all -c2 --configfile config/simulated.yaml     # a simulated cohort with known truth
#   snakemake gwas_all --profile profiles/slurm --configfile my.yaml   # one job per arm, group and chromosome

import os

# Without --configfile, the embedded example. A --configfile is the whole configuration: it is never
# merged with the example's (a key it leaves out means "none" or the command's default).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "example.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/grm.smk"
include: "workflow/rules/phenotypes.smk"
include: "workflow/rules/gemma.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule gwas_all:
    input:
        f"{OUT}/report.md",
        f"{OUT}/loci.tsv",
