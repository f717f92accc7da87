"""Evaluations and inspection of trained SAEs (metrics, spliced loss, feature browser)."""
