"""Reproducible experiments built only from the project's CLI and library (``arcface experiment ...``)."""
