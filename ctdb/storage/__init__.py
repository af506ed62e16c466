"""Local storage: TDB files holding records with CTDB's header, the database registry entry,
durable small files.
"""
