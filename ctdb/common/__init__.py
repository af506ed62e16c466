"""What every part of pyctdb shares: error codes (`errors`), configuration
and tunables (`config`), key files, the heap settings of a
daemon process (`allocator`). Imports nothing of pyctdb: it is the
bottom layer.
"""
