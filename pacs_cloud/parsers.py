"""Request body parsers of the REST API (the default parser classes).

Kept apart from ``restapi``: DRF loads its default parsers while its views
module is still being imported.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.parsers import JSONParser


class ObjectJSONParser(JSONParser):
    """JSON bodies of our API are objects; ``null``, arrays and bare values are refused (400)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        if not isinstance(data, dict):
            raise exceptions.ParseError(f"The request body must be a JSON object, not {type(data).__name__}.")
        return data
