"""Prompt datasets and the per-round prompt schedule."""
