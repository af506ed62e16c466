"""How nodes reach each other, behind one contract (`base.Transport`):
point-to-point TCP (`tcp`, links authenticated by `linkauth`), virtual
synchrony on corosync's CPG (`cpg`, through `libcpg` and a private
`corosync`), and an in-memory network for simulation (`memory`). The other
modules of a backend carry its name as a prefix (`tcp_connections`,
`cpg_wire`, `libcpg_abi`, `memory_links`, ...); each says which part it holds.

Transports know nothing of the daemon: they move opaque payloads and report
views (import-linter contract in pyproject.toml).
"""
