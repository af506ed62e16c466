"""Wire formats, pure code with no I/O: the client protocol's frames
(`client`), node-to-node messages (`messages`) and the schemas both are
checked against field by field (`schema`).

May import only `ctdb.common`: the client library, the daemon and the
fuzzers all build on it.
"""
