# flowpheno GWAS comparison: flow training -> GEMMA mvLMM -> PLINK clumping -> loci counts,
# against the univariate rank-inverse-normal baseline and an iid flow.
#
#   snakemake gwas_all -c2                                   # config/config.yaml (embedded example)
#   snakemake gwas_all -c2 --configfile config/simulated.yaml
#   snakemake gwas_all --profile profiles/slurm              # one job per method and trait group

import os

# defaults from the repository's config; --configfile / --config override them, from any --directory
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


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
