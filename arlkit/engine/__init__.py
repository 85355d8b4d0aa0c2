"""arlkit.engine."""
