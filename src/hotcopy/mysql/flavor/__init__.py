"""SQL dialects: every statement hotcopy sends is built here, never pasted in a workflow."""

from hotcopy.mysql.flavor.base import (
    Coordinates,
    Flavor,
    LockStage,
    ReplicaStatus,
    Statement,
    detect,
    quote_identifier,
)

__all__ = ["Coordinates", "Flavor", "LockStage", "ReplicaStatus", "Statement", "detect",
           "quote_identifier"]
