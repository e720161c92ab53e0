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
    params:
        bfile=COHORT["bfile"],
        assoc=f"{OUT}/{{group}}/{{method}}/assoc.tsv",
        out_dir=f"{OUT}/{{group}}/{{method}}/evaluation",
        name="{method}:{group}",
        truth=TRUTH_ARG,
    log:
        f"{OUT}/logs/evaluate_{{group}}_{{method}}.log",
    threads: 1
    shell:
        "flowpheno gwas evaluate --bfile {params.bfile:q} --assoc {params.assoc:q} "
        "--out-dir {params.out_dir:q} --name {params.name:q} "
        "{params.truth:q} --threshold {GWAS[p_threshold]} --alpha {GWAS[alpha]} --r2 {GWAS[clump_r2]} "
        "--kb {GWAS[clump_kb]} --truth-window-kb {GWAS[truth_window_kb]} --overwrite > {log:q} 2>&1"
