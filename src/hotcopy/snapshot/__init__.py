"""Filesystem snapshots of a source datadir: one module per backend."""
