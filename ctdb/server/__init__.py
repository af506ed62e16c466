"""The daemon: client sessions, node state, controls, the leader's loop and start-up."""
