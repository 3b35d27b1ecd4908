"""The IstioMulticluster controller: fetch each peer's metadata, pin its identity, mint tokens, write outputs.

Layers, outermost first:

* :mod:`.operator` — kopf handlers (create/update/resume/delete, a jittered resync timer) and the index
  of every resource's status, so outputs shared by all peers are computed from all of them;
* :mod:`.kube` — the few writes kopf does not do: Secrets, the mesh ConfigMap, our keypair;
* :mod:`.fetch` — bounded HTTPS/file fetches (no redirects, 1 MiB cap, timeouts, TLS verified);
* :mod:`.reconcile` — one peer's reconcile as a function of its resource, the fetcher and a clock;
* the pure parts: :mod:`.model` (spec, names), :mod:`.identity` (pinning), :mod:`.tokens` (minting and
  re-minting), :mod:`.conditions`, :mod:`.outputs` (trust store, remote secret, mesh settings),
  :mod:`.backoff`.
"""
