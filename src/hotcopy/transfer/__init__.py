"""Moving a snapshot from source to target: one module per method."""
