"""arlkit.losses."""
