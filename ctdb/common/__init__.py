"""What every part of pyctdb shares: error codes (`errors`), configuration
and tunables (`config`), key files. Imports nothing of pyctdb: it is the
bottom layer.
"""
