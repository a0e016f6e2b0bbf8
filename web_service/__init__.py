"""The fxbroker web service: the HTTP API, the only writer of SQL and the only creator of tasks.

``create_app(WebSettings.from_env())`` (:mod:`.app`) is the ASGI app. A request passes the
request id (:mod:`.errors`) and the metrics, then authentication and the rate limit
(:mod:`.middleware`), then its route (:mod:`.routes`), which reads and writes SQL through
the catalogs of :mod:`.store` and Redis through :mod:`.taskstore`. Shared server plumbing
(Redis client, settings rules, tokens, cache, error root) is :mod:`service_common`'s.

Modules::

    app                        wiring: the lifespan's resources, the routes, the middleware
    settings                   WebSettings, from keywords or the environment
    context                    AppContext: what every handler shares
    errors                     ApiError, the JSON error answers, the request id
    accounts                   users and API tokens (the CLI and the dev stack call it)
    client_credentials         OAuth2 client ids and secrets (hashed), for Globus Compute scripts
    schema                     Alembic migrations to head, without an alembic.ini
    overview                   endpoints as a user sees them: status, load, what they finished
    routes/meta                whoami, info, health, readiness, metrics, the OpenAPI document
    routes/functions           register, list, read, delete, share functions
    routes/endpoints           register, list, read, delete endpoints; status, sharing, allow-list
    routes/submit              submit a batch of tasks: the hot path
    routes/tasks               read and cancel tasks; list and read task groups
    routes/agents              what an endpoint's agents reach, through the ws gateway (its session)
    routes/oauth               the OAuth2 client-credentials token routes (/v2/oauth2/token, revoke)
    routes/compute_v2          the Globus Compute /v2 routes (version, functions, endpoints, tasks)
    routes/compute_v3          the Globus Compute /v3 routes (register, lock, allow-list, submit)
    routes/compute_documents   fxbroker records <-> Globus Compute documents (pure)
    routes/compute_openapi     the Globus Compute routes in the OpenAPI document
    routes/lookups             the endpoint or function a path names, checked against the caller
    routes/bodies              request bodies: read within the limit, parsed by pure functions
    routes/openapi             the OpenAPI document, written by hand from the routes
    routes/openapi_schemas     JSON Schemas of the bodies, for that document
    middleware/auth            bearer-token check and the middleware with the rate limit
    middleware/availability    Redis or SQL away: 503 with Retry-After, one log line per outage
    middleware/globus_auth     Globus Auth access tokens, by introspection
    middleware/ratelimit       per-user token buckets
    middleware/metrics         Prometheus counters and histograms, and their middleware
    store/models               the SQL schema (tables, ids, naming convention)
    store/database             the async SQL engine
    store/functions            the function catalog (SQL, cached in process)
    store/endpoints            the endpoint catalog (SQL, cached in process)
    store/task_groups          the task-group catalog (SQL, cached in process)
    store/sharing              who else may use a function or an endpoint
    taskstore/tasks            queue a batch, read tasks and task-group pages, function code
    taskstore/endpoint_state   an endpoint's queue load, heartbeat and allow-list mirror
    taskstore/cancel           cancel tasks: one script per task, notices, interrupts
    taskstore/idempotency      Idempotency-Key records of submits
"""
