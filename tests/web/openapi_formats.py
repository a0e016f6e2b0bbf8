"""The string formats of the OpenAPI document that schemathesis cannot know, for its runs:
loaded by the schemathesis command through ``SCHEMATHESIS_HOOKS`` (see test_web_openapi)."""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from sdk.serialize import pack_buffers
from web_service.routes.compute_openapi import PACKED_CODE_FORMAT

schemathesis.openapi.format(
    PACKED_CODE_FORMAT,
    st.builds(
        lambda strategy, body: pack_buffers([f"{strategy}\n{body}"]),
        st.sampled_from(["01", "st", "sd"]),
        st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    ),
)
