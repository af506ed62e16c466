"""What a client may ask the daemon: every operation, one table.

The operations are declared where they belong, each with the schema of its
arguments (`client_ops.op`): records, entry lists and transactions in
`record_ops`, node queries, administration, whole-database operations and
messages in `admin_ops`. Importing them registers them; the session serving
a client (`ctdb.server.sessions`) looks requests up in `OPS`.
"""

from __future__ import annotations

from ctdb.server import admin_ops, record_ops
from ctdb.server.client_ops import OPS

#: the modules whose operations OPS holds (imported for their registrations)
MODULES = (record_ops, admin_ops)

__all__ = ["MODULES", "OPS"]
