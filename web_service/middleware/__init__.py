"""What wraps every request before its route: authentication (fxbroker tokens and Globus
Auth ones), the per-user rate limit, and the Prometheus metrics.

:mod:`.auth` (the bearer-token check and the middleware that applies it with the rate
limit), :mod:`.globus_auth` (Globus Auth tokens by introspection), :mod:`.ratelimit` (token
buckets), :mod:`.metrics` (counters, histograms and the metrics middleware). The request id
and the JSON error answers are :mod:`web_service.errors`.
"""
