"""Text a request may carry: any, but NUL (U+0000).

PostgreSQL's text columns cannot hold U+0000 (asyncpg refuses the value)
while SQLite's can, so a NUL that reached the database would be stored on
one and a 500 on the other. Every text field of a request (body, path,
query, WebSocket frame) is `Text`, and a NUL is refused at the edge, the
same on both databases: a 422 (400 under `/v1`) naming the field, with a
message saying what to change. OpenAPI states the rule on each such field
(`"not": {"pattern": "\\u0000"}`), so generated clients and schema fuzzers
know it too.

    Text                                     text without constraints
    Annotated[str, Field(...), NO_NUL]       with them: the marker goes last
                                             (before them, pydantic drops a
                                             `pattern` from the JSON schema)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

NUL = "\x00"
NUL_MESSAGE = "must not contain NUL (U+0000) characters; remove them"
NUL_ERROR_TYPE = "nul_character"


def refuse_nul(value: str) -> str:
    if NUL in value:
        raise PydanticCustomError(NUL_ERROR_TYPE, NUL_MESSAGE)
    return value


@dataclass(frozen=True, slots=True)
class NoNul:
    """An `Annotated` marker for `str`: a NUL fails validation, and the schema says so."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(refuse_nul, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        # `not` rather than `pattern`: some fields have a pattern of their own.
        json_schema["not"] = {"pattern": "\\u0000"}
        return json_schema


NO_NUL = NoNul()
Text = Annotated[str, NO_NUL]
