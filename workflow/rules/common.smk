# Paths and choices resolved once from the configuration (workflow/schemas/config.schema.yaml describes
# every key). Every path reaches a shell command quoted: {input:q}, {output:q}, {log:q}, {params.x:q}.
# A key the configuration leaves out means "none" or the default of the command it feeds.

import os
import shlex
import sys

from snakemake.utils import validate

from flowpheno.config import WORKFLOW_KEYS, FitConfig, fit_arguments, fit_config, worded, workflow_name
from flowpheno.errors import OptionError


def stop(message):
    """A configuration the workflow cannot run: one line, before any job."""
    sys.exit(f"error: config {message}")


def refuse(message):
    """An input the workflow cannot use: one line (the message names the file or key), before any job."""
    sys.exit(f"error: {message}")


def typed_fit_keys(extra):
    """The typed `fit:` keys that replace the options of a former `fit.extra` string."""
    words, keys = shlex.split(extra or ""), []
    flags = {flag.flag: key for key, flag in WORKFLOW_KEYS.items()}
    negatives = {flag.negative: key for key, flag in WORKFLOW_KEYS.items() if flag.negative}
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            continue
        if word in negatives:
            keys.append(f"{negatives[word]}: false")
            continue
        key = flags.get(word.split("=", 1)[0])
        if key is None:
            keys.append(f"{word.split('=', 1)[0]} has no key (the workflow sets it, or it is not a workflow setting)")
            while words and not words[0].startswith("--"):
                words.pop(0)
        elif WORKFLOW_KEYS[key].switch:
            keys.append(f"{key}: true")
        else:
            value = word.split("=", 1)[1] if "=" in word else (words.pop(0) if words else "")
            keys.append(f"{key}: [{value}]" if isinstance(WORKFLOW_KEYS[key].default, list) else f"{key}: {value}")
    return keys


if isinstance(config.get("fit"), dict) and "extra" in config["fit"]:
    keys = typed_fit_keys(config["fit"]["extra"])
    stop("fit.extra: free text is no longer pasted into flowpheno fit; delete it and set typed keys under fit: "
         + ("; ".join(keys) if keys else "mode, epochs, lr, patience, ... (workflow/schemas/config.schema.yaml)"))
if isinstance(config.get("simulate"), dict):  # YAML reads a bare `null:` key as None
    config["simulate"] = {("null" if key is None else str(key)): value for key, value in config["simulate"].items()}
try:
    validate(config, "../schemas/config.schema.yaml")
except Exception:  # Snakemake prints the whole schema; say which key is wrong, in one line
    import jsonschema
    import yaml

    with open(os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")) as handle:
        SCHEMA = yaml.safe_load(handle)
    problem = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(SCHEMA)(SCHEMA).iter_errors(config))
    if problem is None:
        raise
    where = ".".join(map(str, problem.absolute_path))
    key = f"{where}: " if where else ""
    stop(f"{key}{problem.message} (the keys: workflow/schemas/config.schema.yaml)")

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
        refuse(f"config: cohort.{missing[0]} is required (or a `simulate` block to simulate the cohort)")
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
                    refuse(f"config trait_groups.{group}: {COHORT['pheno']} has no column {trait!r} "
                                     f"(its columns: {', '.join(columns[:20])})")
    bim = f"{COHORT['bfile']}.bim"
    if LOCO and os.path.exists(bim):
        table = pd.read_csv(bim, sep=r"\s+", header=None, usecols=[0, 3], dtype={0: str})
        placed = table.loc[(table[3] >= 0) & (table[0] != "0"), 0].unique()
        if len(placed) < 2:
            refuse(f"{bim}: every placed SNP is on chromosome {', '.join(placed) or 'none'}; leave-one-chromosome-out "
                             "association needs two or more: set gwas.loco: false in the configuration")


if not SIMULATE:
    check_cohort_files()
METHODS = config["methods"]
FIT = {key: value for key, value in (config.get("fit") or {}).items() if value is not None}
FLOW_MODES = {"flow_iid": "iid", "flow_kinship": FIT.get("mode", FitConfig().mode)}
KINSHIP_ONLY = {"mode", "s2_grid", "scale_step"}  # settings of the kinship modes: flow_iid is always --mode iid
FIT_SETTINGS = {
    "flow_iid": {key: value for key, value in FIT.items() if key not in KINSHIP_ONLY},
    "flow_kinship": {key: value for key, value in FIT.items() if key != "mode"},
}
if "s2_grid" in FIT and FLOW_MODES["flow_kinship"] != "grid":
    stop(f"fit.s2_grid: the values of mode: grid, not of mode: {FLOW_MODES['flow_kinship']}; delete it or set mode: grid")
for method in ("flow_iid", "flow_kinship"):
    try:  # the values flowpheno fit would refuse, refused now
        fit_config(FIT_SETTINGS[method], mode=FLOW_MODES[method])
    except OptionError as error:
        stop(worded(error, workflow_name, yaml=True))
FIT_ARGS = {method: fit_arguments(settings) for method, settings in FIT_SETTINGS.items()}
"""`flowpheno fit` options of each flow arm from the `fit:` keys (flowpheno.config.FLAGS maps each key to its flag)."""
RINT_METHODS = [method for method in ("single", "rint_mv") if method in METHODS]
if "oracle" in METHODS and not SIMULATE:
    refuse("config methods: oracle needs the simulator's own inverse map, known only for a cohort the workflow "
                     "simulates (a `simulate` block); remove oracle from methods")

# Every GWAS step reads one fileset: the cohort's, sorted, without SNPs at a negative position or on
# chromosome 0 (flowpheno gwas prepare; its .log and .excluded.tsv say what was left out).
GENOTYPES = f"{OUT}/genotypes/cohort"
BED = multiext(GENOTYPES, ".bed", ".bim", ".fam")
FAM = f"{GENOTYPES}.fam"
# Optional options as lists, for params used as {params.x:q}: each item is quoted, so paths
# with spaces or shell characters stay one argument.
COVAR_ARG = ["--covar", COHORT["covar"]] if COHORT["covar"] else []
COVAR_INPUT = [COHORT["covar"]] if COHORT["covar"] else []
TRUTH_INPUT = [COHORT["truth"]] if COHORT["truth"] else []
TRUTH_ARG = ["--truth", COHORT["truth"]] if COHORT["truth"] else []
# A simulated cohort's last simulate.null_chromosomes chromosomes (named 1..chromosomes) carry no effect: lambda GC
# over their SNPs measures calibration alone (flowpheno gwas evaluate --null-chromosomes).
if SIMULATE and not 0 <= SIMULATE.get("null_chromosomes", 0) < SIMULATE.get("chromosomes", 5):
    stop(f"simulate.null_chromosomes: must be 0 to {SIMULATE.get('chromosomes', 5) - 1} (fewer than "
         f"simulate.chromosomes, {SIMULATE.get('chromosomes', 5)}), got {SIMULATE['null_chromosomes']}")
NULL_CHROMOSOMES = (
    [str(c) for c in range(SIMULATE.get("chromosomes", 5) - SIMULATE["null_chromosomes"] + 1,
                           SIMULATE.get("chromosomes", 5) + 1)]
    if SIMULATE and SIMULATE.get("null_chromosomes") else []
)
NULL_CHROMOSOMES_ARG = ["--null-chromosomes", ",".join(NULL_CHROMOSOMES)] if NULL_CHROMOSOMES else []
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


def plink_prefix(wildcards, input):
    """The PLINK 1 prefix of a rule's .bed input (a param computed from the input, not restated)."""
    return next(path for path in input if path.endswith(".bed")).removesuffix(".bed")


def output_folder(wildcards, output):
    """The folder of a rule's first output."""
    return os.path.dirname(output[0])


def simulate_options(block):
    """`flowpheno simulate` options from the `simulate` block, one list item per word."""
    options = []
    for key, value in block.items():
        if key != "null":
            options += [f"--{key.replace('_', '-')}", str(value)]
    return options + (["--null"] if block.get("null") else [])


def per_trait(wildcards):
    return ["--per-trait"] if wildcards.method == "single" else []


def tested(wildcards):
    """The GEMMA -p file and columns the arm's association tested, and which test (mvLMM or per trait)."""
    test = "per-trait" if wildcards.method == "single" else "mvlmm"
    return ["--pheno", f"{OUT}/{wildcards.group}/{wildcards.method}/pheno.gemma.txt", "--columns", columns(wildcards),
            "--test", test]


def chromosome_tables(wildcards):
    """gwas.loco: the arm's per-chromosome association tables, one per chromosome of the prepared fileset."""
    return [f"{OUT}/{wildcards.group}/{wildcards.method}/loco/{chrom}.assoc.tsv" for chrom in loco_chromosomes()]


def loco_chromosomes():
    """Chromosomes of the prepared fileset, in .bim order (known once flowpheno gwas prepare has run)."""
    bim = checkpoints.prepare_genotypes.get().output.bim
    with open(bim) as handle:
        chromosomes = list(dict.fromkeys(line.split()[0] for line in handle if line.strip()))
    if len(chromosomes) < 2:
        raise ValueError(f"{bim}: every SNP is on chromosome {chromosomes[0]}; leave-one-chromosome-out association needs "
                         "two or more: set gwas.loco: false in the configuration")
    return chromosomes
