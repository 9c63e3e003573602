"""The request body parser of agentflow's views: JSON, with a size limit checked before anything is read."""

from __future__ import annotations

import json
from typing import IO, Any

from rest_framework.parsers import BaseParser

from .conf import agentflow_settings
from .exceptions import MalformedJSON, PayloadTooLarge


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JSONParser(BaseParser):
    """``application/json`` up to ``AGENTFLOW["MAX_INPUT_BYTES"]``.

    Not a subclass of DRF's ``JSONParser`` on purpose: DRF reads the whole body through ``request.body`` for
    those, before any limit of ours could apply. The declared ``Content-Length`` is checked first, then the
    bytes actually read (a body without one, or a lying one).
    """

    media_type = "application/json"

    def parse(
        self, stream: IO[bytes], media_type: str | None = None, parser_context: dict[str, Any] | None = None
    ) -> Any:
        limit = agentflow_settings.max_input_bytes
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        too_large = PayloadTooLarge(
            f"The request body is larger than {limit} bytes.", details={"max_bytes": limit}
        )
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large  # before reading a byte of it
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise too_large
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise MalformedJSON(f"The request body is not valid JSON: {exc}") from None
