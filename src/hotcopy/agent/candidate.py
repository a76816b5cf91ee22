"""Who an automatic failover would promote, read off the replicas of the dead master.

The agent names the candidate in its decision so that an operator reading `agent
status` sees who is about to become master before it happens. It uses the failover
workflow's own rule (hotcopy.workflows.failover.choose: the replica that has every GTID
the others have), on the positions as they are now; the workflow applies every relay
log first and chooses again, so a replica that had fetched more than it applied may
still win there. Read-only: nothing here changes a server.
"""

from __future__ import annotations

import logging

from hotcopy.agent.decisions import Candidate
from hotcopy.agent.model import Observation
from hotcopy.runtime import Runtime
from hotcopy.workflows import failover, topology

log = logging.getLogger(__name__)


def read(runtime: Runtime, observation: Observation) -> Candidate:
    """(name, reasons) or (None, why none): only replicas of the dead master count."""
    master = observation.master
    views = {}
    for name in sorted(observation.replicas):
        view = topology.read_server(runtime, name)
        if view.reachable and view.channels == 1 and view.replicates_from == master:
            views[name] = view
    if not views:
        return None, [f"no reachable replica replicates from {master}: nothing to promote"]
    chosen, lacks = failover.choose(views, None)
    if chosen is None:
        named = "; ".join(f"{n} lacks {m}" for n, m in sorted(lacks.items()))
        return None, [f"the replicas are incomparable, each has GTIDs another lacks: {named}; "
                      "the workflow refuses without --force (promoting any loses the "
                      "others' GTIDs): a human must choose (`hotcopy failover --force --to "
                      "NAME`)"]
    others = sorted(n for n in views if n != chosen)
    position = views[chosen].gtid_slave_pos or views[chosen].gtid_current_pos
    reasons = [f"candidate {chosen} (at {position or '?'}) has every GTID "
               + (f"{', '.join(others)} {'has' if len(others) == 1 else 'have'}" if others
                  else "(it is the only replica)"),
               "the failover workflow chooses again after every replica has applied its "
               "relay log"]
    return chosen, reasons
