"""arlkit.data."""
