"""The proxy (``apiproxy serve``): a remote cluster's istiod reads this cluster's API through it, and
nothing else.

One request, outermost first: :mod:`.app` assembles the listener from :mod:`.settings` and follows the
files it reloads; :mod:`.server` strings the pipeline together — :mod:`.authn` identifies the caller (a peer's
JWT or client certificate, against the trust store of :mod:`apiproxy.auth`), :mod:`apiproxy.policy`
classifies and authorizes, :mod:`.limits` rate-limits, :mod:`.headers` allowlists what crosses in each
direction, and :mod:`.upstream` forwards with the proxy's **own** credentials over :mod:`.http1`,
streaming watches byte for byte. A concealed resource is answered here instead (:mod:`.conceal`, with
the one fact it needs from :mod:`.upstream_facts`). Every request ends in one :mod:`.audit` record and
the :mod:`.metrics`; :mod:`.workers` runs several processes on one port, :mod:`.memory` gives memory
back after a burst.
"""
