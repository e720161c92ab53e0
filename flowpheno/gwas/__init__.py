"""The GWAS path: GEMMA (GRM, univariate and multivariate LMM), PLINK clumping, evaluation."""
