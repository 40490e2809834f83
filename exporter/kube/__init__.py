"""Adapters to the Kubernetes API: connection settings and the list+watch stack."""
