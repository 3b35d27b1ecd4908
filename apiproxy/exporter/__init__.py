"""The metadata exporter (``apiproxy exporter``): publishes what federated peers need to trust and reach
this cluster, in Deckhouse's formats.

Layers, each testable alone: :mod:`~apiproxy.exporter.sources` (Kubernetes watches and files) →
:mod:`~apiproxy.exporter.state` (current inputs; re-renders on change) → :mod:`~apiproxy.exporter.catalog`
(the documents, pure) → :mod:`~apiproxy.exporter.http` (serving, tokens, ETags);
:mod:`~apiproxy.exporter.main` wires them.

The watches use the official ``kubernetes`` client through :mod:`apiproxy.kubewatch` (the loop the
proxy's trust Secret already uses), not kopf indices: the exporter is a read-only server that needs a
handful of list+watch streams, and kopf would bring an operator runtime (handlers, peering, event
posting, its own RBAC needs) to a process that must stay small and hold read-only rights. kopf belongs
to the controller, which reconciles resources.
"""
