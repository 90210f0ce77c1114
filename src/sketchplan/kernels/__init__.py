"""Numerical kernels the optimizers run (inverse roots, FD sketch updates, low-rank applies), torch and JAX."""
