# PLINK 1.9 clumping into loci, counts against the truth, lambda GC, Manhattan and QQ plots. The
# gwas.* thresholds the configuration leaves out keep flowpheno gwas evaluate's defaults.

EVALUATE_ARGS = options(GWAS, {"p_threshold": "--threshold", "alpha": "--alpha", "clump_r2": "--r2", "clump_kb": "--kb",
                               "truth_window_kb": "--truth-window-kb"})


rule evaluate:
    input:
        [f"{OUT}/{{group}}/{{method}}/pheno.gemma.txt", *BED, *TRUTH_INPUT],
        assoc=f"{OUT}/{{group}}/{{method}}/assoc.tsv",
    output:
        summary=f"{OUT}/{{group}}/{{method}}/evaluation/summary.json",
        loci=f"{OUT}/{{group}}/{{method}}/evaluation/loci.tsv",
        manhattan=f"{OUT}/{{group}}/{{method}}/evaluation/manhattan.png",
        qq=f"{OUT}/{{group}}/{{method}}/evaluation/qq.png",
    params:
        bfile=plink_prefix,
        out_dir=output_folder,
        name="{method}:{group}",
        truth=TRUTH_ARG,
        null_chromosomes=NULL_CHROMOSOMES_ARG,
        tested=tested,
        options=EVALUATE_ARGS,
    log:
        f"{OUT}/logs/evaluate_{{group}}_{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate_{{group}}_{{method}}.tsv"
    threads: 1
    conda:
        "../envs/flowpheno.yaml"
    shell:
        "flowpheno gwas evaluate --bfile {params.bfile:q} --assoc {input.assoc:q} "
        "--out-dir {params.out_dir:q} --name {params.name:q} {params.truth:q} {params.null_chromosomes:q} "
        "{params.tested:q} "
        "{params.options:q} --threads {threads} --overwrite > {log:q} 2>&1"
