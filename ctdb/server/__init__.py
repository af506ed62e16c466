"""The daemon: client sessions (ours: `sessions`, with the operations in
`client_ops`, `record_ops`, `admin_ops`; CTDB's: `ctdb_sessions`, with the
controls in `ctdb_handlers`), the node (`node`, and its parts `databases`,
`liveness`, `messaging`, `controls`, `serving`), and what differs between
a tcp node (a leader's recoveries: `leader`, `recovery_member`) and a vs
node (state read off the ordered stream: `stream`), behind one interface
(`membership.py`). It may import every layer
below it (engines, storage, protocol, common) and the transport contract;
only the start-up (`daemon.py`) picks a transport backend."""
