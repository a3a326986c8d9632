"""Autoencoder experiments of the Sparseout paper: sections 4.1 (Figure 1, sparsity) and 4.2 (Table 1, cost)."""
