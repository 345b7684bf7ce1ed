"""Runnable recipes: ``python -m esper.scripts.train``."""
