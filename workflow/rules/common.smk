# Paths and choices resolved once from the configuration (schema: workflow/schemas/config.schema.yaml,
# explained in config/README.md). Every path reaches a shell command quoted: {input:q}, {output:q}, {log:q},
# {params.x:q}. A key the configuration leaves out means "none" or the default of the command it feeds.

from snakemake.utils import validate

if isinstance(config.get("simulate"), dict):  # YAML reads a bare `null:` key as None
    config["simulate"] = {("null" if key is None else str(key)): value for key, value in config["simulate"].items()}
validate(config, "../schemas/config.schema.yaml")

OUT = config["outdir"].rstrip("/")
SIMULATE = config.get("simulate") or None
GWAS = config["gwas"]
LOCO = GWAS["loco"]

if SIMULATE:
    COHORT = {
        "bfile": f"{OUT}/cohort/cohort",
        "pheno": f"{OUT}/cohort/pheno.tsv",
        "covar": f"{OUT}/cohort/covar.tsv",
        "truth": "" if SIMULATE.get("null") else f"{OUT}/cohort/truth.tsv",
        "oracle": f"{OUT}/cohort/oracle.tsv",
    }
else:
    given = config.get("cohort") or {}
    missing = [key for key in ("bfile", "pheno") if not given.get(key)]
    if missing:
        raise ValueError(f"config: cohort.{missing[0]} is required (or a `simulate` block to simulate the cohort)")
    COHORT = {key: given.get(key) or "" for key in ("bfile", "pheno", "covar", "truth")}

GROUPS = config["trait_groups"]


def check_cohort_files():
    """Before any job: every trait of trait_groups is a column of the cohort's phenotype file, and
    LOCO has two or more chromosomes with placed SNPs (a simulated cohort is checked by its own steps)."""
    import os

    import pandas as pd

    from flowpheno.io.tables import read_table

    if os.path.exists(COHORT["pheno"]):
        columns = [str(c) for c in read_table(COHORT["pheno"]).columns]
        for group, traits in GROUPS.items():
            for trait in traits:
                if trait not in columns:
                    raise ValueError(f"config trait_groups.{group}: {COHORT['pheno']} has no column {trait!r} "
                                     f"(its columns: {', '.join(columns[:20])})")
    bim = COHORT["bfile"] + ".bim"
    if LOCO and os.path.exists(bim):
        table = pd.read_csv(bim, sep=r"\s+", header=None, usecols=[0, 3], dtype={0: str})
        placed = table.loc[(table[3] >= 0) & (table[0] != "0"), 0].unique()
        if len(placed) < 2:
            raise ValueError(f"{bim}: every placed SNP is on chromosome {', '.join(placed) or 'none'}; leave-one-chromosome-out "
                             "association needs two or more: set gwas.loco: false in the configuration")


if not SIMULATE:
    check_cohort_files()
METHODS = config["methods"]
FLOW_MODES = {"flow_iid": "iid", "flow_kinship": "alternating"}
RINT_METHODS = [method for method in ("single", "rint_mv") if method in METHODS]
if "oracle" in METHODS and not SIMULATE:
    raise ValueError("config methods: oracle needs the simulator's own inverse map, known only for a cohort the workflow "
                     "simulates (a `simulate` block); remove oracle from methods")

# Every GWAS step reads one fileset: the cohort's, sorted, without SNPs at a negative position or on
# chromosome 0 (flowpheno gwas prepare; its .log and .excluded.tsv say what was left out).
GENOTYPES = f"{OUT}/genotypes/cohort"
BED = multiext(GENOTYPES, ".bed", ".bim", ".fam")
FAM = GENOTYPES + ".fam"
# Optional options as lists, for params used as {params.x:q}: each item is quoted, so paths
# with spaces or shell characters stay one argument.
COVAR_ARG = ["--covar", COHORT["covar"]] if COHORT["covar"] else []
COVAR_INPUT = [COHORT["covar"]] if COHORT["covar"] else []
TRUTH_INPUT = [COHORT["truth"]] if COHORT["truth"] else []
TRUTH_ARG = ["--truth", COHORT["truth"]] if COHORT["truth"] else []
GEMMA_COVAR_ARG = COVAR_ARG if GWAS["gemma_covariates"] else []


wildcard_constraints:
    group="|".join(GROUPS),
    method="|".join(METHODS),
    chrom="[^/]+",


def traits(wildcards):
    return ",".join(GROUPS[wildcards.group])


def columns(wildcards):
    return ",".join(str(i + 1) for i in range(len(GROUPS[wildcards.group])))


def options(block, names):
    """`--name value` for each key of `block` the configuration sets (one list item per word)."""
    words = []
    for key, option in names.items():
        if (block or {}).get(key) is not None:
            words += [option, str(block[key])]
    return words


def loco_chromosomes():
    """Chromosomes of the prepared fileset, in .bim order (known once flowpheno gwas prepare has run)."""
    bim = checkpoints.prepare_genotypes.get().output.bim
    with open(bim) as handle:
        chromosomes = list(dict.fromkeys(line.split()[0] for line in handle if line.strip()))
    if len(chromosomes) < 2:
        raise ValueError(f"{bim}: every SNP is on chromosome {chromosomes[0]}; leave-one-chromosome-out association needs "
                         "two or more: set gwas.loco: false in the configuration")
    return chromosomes
