"""The record engines behind one interface (`base.RecordEngine`): dmaster
migration with leader-driven recovery for tcp (`migration`, whose routing
and hand-over decisions are pure in `handover`; `dmaster_calls`,
`persistent_calls`, `transactions`, `recovery`, `merge`, `vacuum`) and the
ordered stream for vs (`ordered/`).

Engines see their node only through `host.Host`. They may import storage,
protocol, common and the transport contract (`transport.base`); never the
daemon (`ctdb.server`) nor a transport backend (import-linter contracts in
pyproject.toml).
"""
