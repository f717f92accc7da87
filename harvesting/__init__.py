"""Harvesting: model + corpus sources, the harvest loop, and the activation cache format."""
