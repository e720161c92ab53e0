# PLINK 1.9 clumping into loci, counts against the truth, lambda GC, Manhattan and QQ plots.

GWAS = config["gwas"]


rule evaluate:
    input:
        [f"{OUT}/{{group}}/{{method}}/assoc.tsv"] + list(BED) + TRUTH_INPUT,
    output:
        summary=f"{OUT}/{{group}}/{{method}}/evaluation/summary.json",
        loci=f"{OUT}/{{group}}/{{method}}/evaluation/loci.tsv",
        manhattan=f"{OUT}/{{group}}/{{method}}/evaluation/manhattan.png",
        qq=f"{OUT}/{{group}}/{{method}}/evaluation/qq.png",
    log:
        f"{OUT}/logs/evaluate_{{group}}_{{method}}.log",
    threads: 1
    shell:
        "flowpheno gwas evaluate --bfile {COHORT[bfile]} --assoc {OUT}/{wildcards.group}/{wildcards.method}/assoc.tsv "
        "--out-dir {OUT}/{wildcards.group}/{wildcards.method}/evaluation --name {wildcards.method}:{wildcards.group} "
        "{TRUTH_ARG} --threshold {GWAS[p_threshold]} --alpha {GWAS[alpha]} --r2 {GWAS[clump_r2]} "
        "--kb {GWAS[clump_kb]} --truth-window-kb {GWAS[truth_window_kb]} > {log} 2>&1"
