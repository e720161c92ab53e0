# Paths and choices resolved once from the configuration (schema: config/README.md).
# Every path reaches a shell command quoted: {input:q}, {output:q}, {log:q}, {params.x:q}.

OUT = config["outdir"].rstrip("/")
SIMULATE = config.get("simulate") or None
if SIMULATE:  # YAML reads a bare `null:` key as None
    SIMULATE = {("null" if key is None else str(key)): value for key, value in SIMULATE.items()}
if SIMULATE:
    COHORT = {
        "bfile": f"{OUT}/cohort/cohort",
        "pheno": f"{OUT}/cohort/pheno.tsv",
        "covar": f"{OUT}/cohort/covar.tsv",
        "truth": "" if SIMULATE.get("null") else f"{OUT}/cohort/truth.tsv",
    }
else:
    COHORT = {key: config["cohort"].get(key) or "" for key in ("bfile", "pheno", "covar", "truth")}

GROUPS = config["trait_groups"]
METHODS = config["methods"]
FLOW_MODES = {"flow_iid": "iid", "flow_kinship": "alternating"}
unknown = sorted(set(METHODS) - set(FLOW_MODES) - {"single"})
if unknown:
    raise ValueError(f"config methods: unknown {unknown}; choose from single, flow_iid, flow_kinship")

BED = multiext(COHORT["bfile"], ".bed", ".bim", ".fam")
FAM = COHORT["bfile"] + ".fam"
# Optional options as lists, for params used as {params.x:q}: each item is quoted, so paths
# with spaces or shell characters stay one argument.
COVAR_ARG = ["--covar", COHORT["covar"]] if COHORT["covar"] else []
COVAR_INPUT = [COHORT["covar"]] if COHORT["covar"] else []
TRUTH_INPUT = [COHORT["truth"]] if COHORT["truth"] else []
TRUTH_ARG = ["--truth", COHORT["truth"]] if COHORT["truth"] else []


wildcard_constraints:
    group="|".join(GROUPS),
    method="|".join(METHODS),


def traits(wildcards):
    return ",".join(GROUPS[wildcards.group])


def columns(wildcards):
    return ",".join(str(i + 1) for i in range(len(GROUPS[wildcards.group])))
