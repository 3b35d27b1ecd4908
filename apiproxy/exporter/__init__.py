"""The metadata exporter (``apiproxy exporter``): publishes what federated peers need to trust and reach
this cluster, in Deckhouse's formats.

Layers, each testable alone: :mod:`~apiproxy.exporter.sources` (Kubernetes watches and files) →
:mod:`~apiproxy.exporter.state` (current inputs; re-renders on change) → :mod:`~apiproxy.exporter.catalog`
(the documents, pure) → :mod:`~apiproxy.exporter.http` (serving, tokens, ETags);
:mod:`~apiproxy.exporter.main` wires them.
"""
