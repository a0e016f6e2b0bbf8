"""What wraps every request before its route: authentication (fxbroker tokens and Globus
Auth ones), the per-user rate limit, the Prometheus metrics, and the 503 answer while Redis
or SQL is away.

:mod:`.auth` (the bearer-token check and the middleware that applies it with the rate
limit), :mod:`.globus_auth` (Globus Auth tokens by introspection), :mod:`.ratelimit` (token
buckets), :mod:`.metrics` (counters, histograms and the metrics middleware), :mod:`.availability`
(Redis and SQL outages: 503 with ``Retry-After``, one log line per outage, ``/readyz``).
The request id and the JSON error answers are :mod:`web_service.errors`.
"""
