"""Wire formats, pure code with no I/O: the client protocol's frames
(`client`), node-to-node messages (`messages`, `op_schemas`,
`message_codec`), the schemas both are checked against field by field
(`schema`, `schema_scalars`, `schema_combinators`, `bounded_msgpack`) and
CTDB's own client protocol for Samba's tools (`ctdb_*`).

May import only `ctdb.common`: the client library, the daemon and the
fuzzers all build on it.
"""
