"""Local storage: TDB files holding records with CTDB's 24-byte header
(`ltdb`), a database and its registry entry (`database`), where records and
database ids live (`placement`), and the small fsync'd counters a node must
remember across crashes (`durable`).

May import only `ctdb.common`: nothing of the wire formats, the engines or the
daemon.
"""
