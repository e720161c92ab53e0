"""The paper's experiments, reproducible: synthetic 2-D shapes (Table 1)."""
