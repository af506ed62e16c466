"""The record engines behind one interface (`base.RecordEngine`): dmaster
migration with leader-driven recovery for tcp (`migration`, whose routing
and hand-over decisions are pure in `handover`; `dmaster_calls`,
`persistent_calls`, `transactions`, `recovery`, `merge`, `vacuum`) and the
ordered stream for vs (`ordered/`).

A request decides without I/O, as a flow (`flows`: a generator) that
yields what it waits for (`effects`, or the engine's own) and is resumed
with the outcome: every client operation of either engine that may wait,
the recovery, commits, record calls, vacuum rounds and lending to Samba's
clients. A request that looks at the state again and again takes steps
(`acquisition`, `dmaster_calls`): each looks once and says what it needs
next, and its flow waits for that. A thin driver does the waiting on the
event loop; tests do it by hand.

Engines see their node only through `host.Host`. They may import storage,
protocol, common and the transport contract (`transport.base`); never the
daemon (`ctdb.server`) nor a transport backend (import-linter contracts in
pyproject.toml).
"""
