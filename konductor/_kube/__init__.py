"""Kubernetes plumbing: configuration, raw JSON requests and error translation."""
