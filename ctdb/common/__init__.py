"""What every part of pyctdb shares: error codes, configuration and tunables, key files."""
