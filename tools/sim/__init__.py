"""Deterministic simulation of a pyctdb cluster: many nodes in one process.

The real `Node` code (engines, recovery, the ordered stream) runs on the
in-memory transport in an asyncio loop with a virtual clock; everything
random comes from one seed, so a failing schedule replays exactly:
`python -m tools.simulate --mode tcp --seed N -v`.

The package is a test tool beside `tests/`, not part of what `ctdbd` imports.
It may import anything of `ctdb` and `transport`; nothing there imports it.

* `loop`      the virtual-time event loop, which can stop one node (SIGSTOP)
* `storage`   TDB files for simulated nodes: small hash tables, injected I/O errors,
              chains that other processes (Samba's clients) hold
* `cluster`   starting, crashing, hanging and cutting off simulated nodes
* `history`   what simulated clients did, as invoke/response records
* `workload`  the simulated clients
* `faults`    the fault injector and the windows in which data may be lost
* `linearizability`  the per-key checker over histories (Wing-Gong search)
* `schedule`  one seeded schedule: start, workload and faults, settle, check
* `campaign`  many schedules, in parallel worker processes, with a summary
"""
