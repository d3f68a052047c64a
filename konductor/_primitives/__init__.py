"""Coordination primitives: pure state transitions, a CAS loop, watch-driven waits."""
