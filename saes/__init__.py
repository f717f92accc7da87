"""Sparse autoencoders: architectures, losses, kernels, trainer and file formats."""
