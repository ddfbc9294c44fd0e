"""Plaintext training (pooled reference and single-party baselines)."""
