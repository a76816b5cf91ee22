"""Workflows: each a list of steps that read like the procedure in DESIGN.md."""
