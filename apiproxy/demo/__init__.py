"""``apiproxy demo``: the kit on loopback, with nothing but this package and kubectl.

:mod:`.federation` runs the whole story (two clusters federating by themselves); :mod:`.proxy_tour` the
single-proxy tour (``--proxy-only``); both stand on :mod:`.sandbox`, a simulated apiserver with the proxy
in front of it, which the end-to-end tests and the benchmarks use too.
"""
