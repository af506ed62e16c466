"""The daemon: client sessions, node state, controls, and what differs between
a tcp node (a leader's recoveries) and a vs node (state read off the ordered
stream), behind one interface (`membership.py`). It may import every layer
below it (engines, storage, protocol, common) and the transport contract;
only the start-up (`daemon.py`) picks a transport backend."""
