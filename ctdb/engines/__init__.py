"""The record engines behind one interface: dmaster migration with leader-driven recovery (tcp) and
the ordered stream (vs).
"""
