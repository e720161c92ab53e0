"""The GWAS path: GEMMA (GRM, univariate and multivariate LMM), PLINK clumping, evaluation."""

TRUTH_WINDOW_KB = 40.0
"""Default truth window (kb either side of a causal SNP). 30 causal SNPs on the 50 Mb of
the default simulated genome: windows of 40 kb cover at most 30 x 80 kb = 2.4 Mb, under
5% of the genome, so a locus placed at random is called true with probability < 0.05
(a 250 kb window covered about 30% and hid false loci among the true ones)."""

__all__ = ["TRUTH_WINDOW_KB"]
