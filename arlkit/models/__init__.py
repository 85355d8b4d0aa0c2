"""arlkit.models."""
