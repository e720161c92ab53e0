# One table of loci and a Markdown report comparing every method and trait group.


rule report:
    input:
        expand(f"{OUT}/{{group}}/{{method}}/evaluation/summary.json", group=GROUPS, method=METHODS),
    output:
        report=f"{OUT}/report.md",
        loci=f"{OUT}/loci.tsv",
    params:
        dirs=[f"{OUT}/{group}/{method}/evaluation" for group in GROUPS for method in METHODS],
        out_dir=output_folder,
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    threads: 1
    conda:
        "../envs/flowpheno.yaml"
    shell:
        "flowpheno gwas report {params.dirs:q} --out-dir {params.out_dir:q} --overwrite > {log:q} 2>&1"
