"""arlkit.eval."""
