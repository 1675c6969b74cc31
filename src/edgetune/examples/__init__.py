"""Runnable examples: `python -m edgetune.examples.quickstart`."""
