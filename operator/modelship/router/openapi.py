"""The router's HTTP API as an OpenAPI 3.1 document, served at `GET /openapi.json`.

Built here from code, once, when the module is imported. The request bodies' schemas say what
`validate.check` lets through, field by field: the field tables below have the same keys as
validate.py's (`CHAT`, `COMPLETION`, `TGI_PARAMETERS`), and tests/unit/test_router_fuzz.py
checks both that they do and, with schemathesis, that a body the schema allows is never
refused by the checks while one it forbids is refused (400). Any other field passes to the
engine untouched, so every body schema allows more properties. Answers are described as the
router gives them: its own errors in OpenAI's shape, an engine's answer passed on as it is.
"""

from __future__ import annotations

import orjson

from .engines import ENGINES
from .load import MAX_WAIT
from .validate import MAX_STOP, ROLES


def _null(schema: dict) -> dict:
    """The schema, or null (OpenAI's "not given")."""
    t = schema.get("type")
    if t is not None:
        return {**schema, "type": [t, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _int(minimum: int | None = None, maximum: int | None = None) -> dict:
    s: dict = {"type": "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    return _null(s)


def _num(minimum: float, maximum: float) -> dict:
    return _null({"type": "number", "minimum": minimum, "maximum": maximum})


_STRINGS = {"type": "array", "items": {"type": "string"}}
_OPENAI = {
    "model": _null({"type": "string"}),
    "max_tokens": _int(1),
    "max_completion_tokens": _int(1),
    "n": _int(1, 128),
    "temperature": _num(0, 2),
    "top_p": _num(0, 1),
    "presence_penalty": _num(-2, 2),
    "frequency_penalty": _num(-2, 2),
    "stream": _null({"type": "boolean"}),
    "stream_options": _null({"type": "object"}),
    "stop": {"anyOf": [{"type": ["string", "null"]}, {**_STRINGS, "maxItems": MAX_STOP}]},
    "seed": _int(),
    "top_logprobs": _int(0, 20),
    "user": _null({"type": "string"}),
    "logit_bias": _null({"type": "object", "additionalProperties": {"type": "number", "minimum": -100,
                                                                     "maximum": 100}}),
}
_PART = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}},
         "if": {"properties": {"type": {"const": "text"}}}, "then": {"required": ["text"],
                                                                     "properties": {"text": {"type": "string"}}}}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string", "enum": list(ROLES)},
    "content": {"anyOf": [{"type": ["string", "null"]}, {"type": "array", "items": _PART}]},
    "name": _null({"type": "string"})}}
_TOKENS = {"type": "array", "items": {"type": "integer"}}
CHAT = {**_OPENAI, "messages": {"type": "array", "minItems": 1, "items": _MESSAGE}, "logprobs": _null({"type": "boolean"})}
COMPLETION = {**_OPENAI, "prompt": {"anyOf": [{"type": "string"}, {**_STRINGS, "minItems": 1},
                                              {**_TOKENS, "minItems": 1},
                                              {"type": "array", "minItems": 1, "items": _TOKENS}]},
              "logprobs": _int(0, 5)}
TGI_PARAMETERS = {
    "max_new_tokens": _int(1),
    "temperature": _null({"type": "number", "exclusiveMinimum": 0}),
    "top_p": _null({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
    "top_k": _int(1),
    "repetition_penalty": _null({"type": "number", "exclusiveMinimum": 0}),
    "do_sample": {"type": "boolean"},
    "stop": _STRINGS,
    "seed": _int(0),
}
# stream_options only with stream: true (validate._openai)
_STREAM_OPTIONS = {"if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
                   "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}}


def _body(required: str, fields: dict) -> dict:
    return {"type": "object", "required": [required], "properties": fields, **_STREAM_OPTIONS}


TGI = {"type": "object", "required": ["inputs"], "properties": {
    "inputs": {"type": "string", "minLength": 1}, "stream": {"type": "boolean"},
    "parameters": {"type": "object", "properties": TGI_PARAMETERS}}}

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
                   "code": {"type": ["string", "null"]}}}}}
_JSON = {"application/json": {"schema": {}}}
_ERRORS = {
    "400": "malformed: not JSON, not an object, or a field the router checks is wrong (`param` names it)",
    "401": "no valid API key (`--api-keys-file`)",
    "403": "the key may not call this model",
    "404": "no such model (the message lists those there are) or no such route",
    "405": "the route takes another method",
    "408": "the body did not arrive within `--body-timeout`",
    "413": "the body is over `--max-body-bytes`",
    "429": "over a limit, or too many requests held for a model that wakes (`Retry-After`)",
    "502": "no endpoint could be reached, or the engine answered 5xx",
    "503": "no ready endpoint (`Retry-After`)",
    "504": "the engine did not begin to answer within `--first-byte-timeout`",
}


def _answers(ok: dict, *errors: str, passed_on: bool = False) -> dict:
    out = {"200": ok}
    for code in errors:
        out[code] = {"description": _ERRORS[code], "content": {"application/json": {"schema": _ERROR}}}
    if passed_on:  # an engine's own 4xx, passed on as it is, in the engine's shape
        out["4XX"] = {"description": "the engine's own refusal, passed on (a flat `{\"object\": \"error\", "
                                     "\"message\", ...}`, older vLLM's and SGLang's, under `error`, OpenAI's shape)",
                      "content": _JSON}
    return out


_INFER_ERRORS = ("400", "401", "403", "404", "408", "413", "429", "502", "503", "504")
_STREAMED = {"description": "the engine's answer; `text/event-stream` when streamed",
             "content": {"application/json": {"schema": {"type": ["object", "array"]}},  # (TGI's `POST /`: an array)
                         "text/event-stream": {"schema": {"type": "object", "properties": {"data": {"type": "string"}}}}}}


def _post(summary: str, schema: dict, errors=_INFER_ERRORS, params: list | None = None) -> dict:
    op = {"summary": summary, "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
          "responses": _answers(_STREAMED, *errors, passed_on=True)}
    if params:
        op["parameters"] = params
    return {"post": op}


def _get(summary: str, content: dict, *errors: str, params: list | None = None, security: bool = True) -> dict:
    op = {"summary": summary, "responses": _answers({"description": "OK", "content": content}, *errors)}
    if params:
        op["parameters"] = params
    if not security:
        op["security"] = []
    return {"get": op}


_OTHERS = ", ".join(e.display for e in ENGINES.values() if not e.tgi_api)
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
          "description": f"the ModelDeployment (or alias) served by TGI (one served by {_OTHERS}: 400 "
                         f"`unsupported_api`, it has the OpenAI routes only)"}]
_OBJECT = {"application/json": {"schema": {"type": "object"}}}


def document() -> dict:
    tgi_errors = ("400", "401", "403", "404", "408", "413", "429", "502", "503", "504")
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelship router", "version": "1",
                 "description": ("The OpenAI API in front of every ModelDeployment (served by "
                                 f"{', '.join(e.display for e in ENGINES.values())}), and TGI's own API in front "
                                 "of those TGI serves (docs/router.md). An `integer` is written without a decimal "
                                 "point: 1.0 "
                                 "is refused (400 invalid_type), as OpenAI and TGI refuse it.")},
        "components": {"securitySchemes": {"key": {"type": "http", "scheme": "bearer",
                                                   "description": "only when the router has `--api-keys-file`"}},
                       "schemas": {"Error": _ERROR}},
        "security": [{"key": []}, {}],
        "paths": {
            "/v1/chat/completions": _post("OpenAI chat completions", _body("messages", CHAT)),
            "/v1/completions": _post("OpenAI completions", _body("prompt", COMPLETION)),
            "/v1/models": _get("the models a request may name", _OBJECT, "401"),
            "/models/{name}": _post("TGI's `POST /` (generate, or stream with `stream: true`)", TGI, tgi_errors,
                                    _NAME),
            "/models/{name}/generate": _post("TGI generate", TGI, tgi_errors, _NAME),
            "/models/{name}/generate_stream": _post("TGI generate, streamed", TGI, tgi_errors, _NAME),
            "/models/{name}/info": _get("TGI's info, the engine's", _OBJECT, "400", "401", "403", "404", "429",
                                        "502", "503", "504", params=_NAME),
            "/health": _get("liveness", _OBJECT, security=False),
            "/metrics": _get("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}}, security=False),
            "/openapi.json": _get("this document", _OBJECT, security=False),
            "/modelship/quota": _get("for the other router replicas: what this one let through", _OBJECT,
                                     security=False),
            "/modelship/load": _get("the operator's long poll of demand and endpoints", _OBJECT, "400",
                                    security=False, params=[
                                        {"name": "version", "in": "query", "schema": {"type": "integer"},
                                         "description": "answer when the load's version is not this one"},
                                        {"name": "wait", "in": "query",
                                         "schema": {"type": "number", "maximum": MAX_WAIT},
                                         "description": f"seconds to wait for it to move (at most {MAX_WAIT:g})"}]),
        },
    }


DOCUMENT = orjson.dumps(document())
