"""apiproxy: authenticated, read-only, audited access to a Kubernetes API for federated clusters."""

__version__ = "0.1.0"
