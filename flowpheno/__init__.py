"""flowpheno: relatedness-aware normalizing flows that Gaussianize phenotypes for GWAS."""

__version__ = "0.1.0"
