"""Wire formats, pure code: the client protocol's frames, node-to-node messages and the schemas
both are checked against.
"""
