"""arlkit.balancers."""
