"""arlkit.ops."""
