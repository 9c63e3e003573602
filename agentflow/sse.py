"""Server-sent events for a run's stream (replay, then live tail). Interface only: to be implemented."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer


class EventStreamRenderer(BaseRenderer):
    """Lets DRF negotiate ``Accept: text/event-stream`` (without it DRF answers 406)."""

    media_type = "text/event-stream"
    format = "sse"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):  # type: ignore[no-untyped-def]
        # Only error responses are rendered through here; event streams are StreamingHttpResponses.
        import json

        return ("event: error\ndata: " + json.dumps(data) + "\n\n").encode()


def event_stream_response(run_id: str, after: str | None) -> StreamingHttpResponse:
    """A response streaming the run's events after id ``after`` as SSE, ending after the terminal event."""
    raise NotImplementedError
