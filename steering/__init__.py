"""Steering: inject SAE features into a model's forward pass and measure the effect."""
