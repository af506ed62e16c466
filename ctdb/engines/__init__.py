"""The record engines behind one interface (`base.RecordEngine`): dmaster
migration with leader-driven recovery for tcp (`migration`, whose routing
and hand-over decisions are pure in `handover`; `dmaster_calls`,
`persistent_calls`, `transactions`, `recovery`, `merge`, `vacuum`) and the
ordered stream for vs (`ordered/`).

A request decides without I/O: a step looks at the state and says what it
needs next (`acquisition`, `dmaster_calls`), or a flow (`flows`: a
generator) yields what it waits for (`effects`, or the engine's own) and
is resumed with the outcome (the recovery, persistent record calls,
vacuum rounds, every client operation of either engine that may wait,
and lending to Samba's clients); a thin
driver does the waiting on the event loop, and tests do it by hand.

Engines see their node only through `host.Host`. They may import storage,
protocol, common and the transport contract (`transport.base`); never the
daemon (`ctdb.server`) nor a transport backend (import-linter contracts in
pyproject.toml).
"""
