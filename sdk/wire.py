"""Constants of the wire that the SDK and the services both spell, defined once.

The SDK builds requests and parses frames with them; ``web_service`` enforces the same
limits and ``ws_service`` serves the same route and error codes. Key names live in
:mod:`sdk.keys`, task states (with :data:`~sdk.states.TERMINAL_STATES`) in :mod:`sdk.states`.
"""

from __future__ import annotations

API = "/v1"
"""The prefix of every fxbroker HTTP route."""

RESULTS_PATH = "/v1/results"
"""The ws service's route for pushed results."""

START_CURSOR = "0"
"""The cursor that replays a task group from its first result."""

IDS_PER_REQUEST = 1000
"""Most task ids one ``batch_status`` or batch cancel request may name."""

GROUP_PAGE_DEFAULT = 1000
"""Tasks one ``GET /v1/task_groups/{id}`` page lists when no ``limit`` is given."""

GROUP_PAGE_MAX = 10_000
"""Most tasks one ``GET /v1/task_groups/{id}`` page may list."""

# Error codes of the ws service's ``error`` frames.
BAD_FRAME = "BAD_FRAME"
"""The frame is not a JSON object of a known type with well-formed fields."""
NOT_FOUND = "NOT_FOUND"
"""The task group does not exist or belongs to someone else."""
UNAUTHORIZED = "UNAUTHORIZED"
"""The connection's token is no longer valid."""
TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
"""The connection already holds the most subscriptions allowed."""
UNAVAILABLE = "UNAVAILABLE"
"""The web service could not be asked whether the group is the caller's; try again."""
INTERNAL = "INTERNAL"
"""The subscription failed on the server's side; subscribing again may succeed."""
