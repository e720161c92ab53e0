"""Reading and writing the formats users have: phenotype tables, kinships, PLINK, GEMMA."""
