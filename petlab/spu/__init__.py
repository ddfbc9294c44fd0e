"""Standalone SecretFlow SPU benchmark scripts (run with SPU's own venv, not imported by petlab)."""
