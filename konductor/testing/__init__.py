"""Test helpers for konductor: a real Kubernetes API server for tests and development."""
