"""arlkit.conditioners."""
