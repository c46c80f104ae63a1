"""What the router checks in a request's body before an engine sees it, and the generation
defaults it writes into requests for TGI. Pure: a dict in, an `ErrorAnswer` or nothing out.

`check(kind, body)` refuses, with 400 in OpenAI's error shape, a body that no engine should be
sent: a required field missing, a field of the wrong JSON type, a value out of its range. The
answer is the one OpenAI gives: a message that names the field ("Missing required parameter:
'messages'.", "Invalid type for 'messages': expected an array, but got a string instead.",
"Invalid value for 'max_tokens': must be at least 1, got -5."), the field's path in `param`
("messages[1].role") and one of three codes: `missing_required_parameter`, `invalid_type`,
`invalid_value`. Without it, llama.cpp answers 500 for some of these, TGI 422 with its own
shape, and a client's mistake would count as the model's failure.

Only the fields the router knows are checked; every other field passes untouched, for the
engines have their own (llama.cpp's `cache_prompt`, `n_probs`; TGI's `grammar`, `truncate`).
The OpenAI kinds ("chat", "completion") follow OpenAI's ranges, and null in an optional field
means "not given", as OpenAI reads it. The TGI kind ("tgi": /generate, /generate_stream and
`POST /`) follows TGI's GenerateRequest: `inputs` a non-empty string, `parameters` an object
whose sampling values TGI wants strictly positive (`top_p` below 1 too), and whose `do_sample`
and `stop` may not be null (TGI's types have no null for them). Booleans are not integers
here, as in JSON (Python's `True` is an `int`); 2.0 is not an integer either, as for OpenAI.

The checks are plain type tests with early returns (a chat body of three messages takes a few
microseconds): the router calls `check` on every request.

`apply_defaults(kind, body, defaults)` writes a ModelDeployment's `serving.generation` into a
request for TGI (which has no server-side defaults), where the request does not set the field
(null counts as not set), and says whether it changed the body. TGI refuses temperature 0 and
top_p 1 and top_k 0: a temperature of 0 on TGI's native API becomes `do_sample: false` (greedy),
and a top_p of 1 or a top_k of 0 (both mean "off") is not written.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import ErrorAnswer

ROLES = ("system", "user", "assistant", "tool", "function", "developer")
_ROLES = frozenset(ROLES)
_NAMES = {int: "an integer", float: "a decimal number", str: "a string", list: "an array", dict: "an object",
          bool: "a boolean", type(None): "null"}
MAX_STOP = 4  # OpenAI's limit on `stop` sequences

Check = Callable[[str, object], None]  # (the field's path, its value): raises ErrorAnswer


# --- the three answers ---------------------------------------------------------------------

def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _missing(param: str) -> ErrorAnswer:
    return ErrorAnswer(400, f"Missing required parameter: '{param}'.", "invalid_request_error",
                       "missing_required_parameter", param=param)


def _wrong_type(param: str, expected: str, value) -> ErrorAnswer:
    got = _NAMES.get(type(value), type(value).__name__)
    return ErrorAnswer(400, f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                       "invalid_request_error", "invalid_type", param=param)


def _invalid(param: str, message: str) -> ErrorAnswer:
    return ErrorAnswer(400, message, "invalid_request_error", "invalid_value", param=param)


def _out_of_range(param: str, why: str, value) -> ErrorAnswer:
    return _invalid(param, f"Invalid value for '{param}': {why}, got {_show(value)}.")


# --- checks for one field, made once --------------------------------------------------------

def _integer(ok: Callable[[int], bool] | None = None, why: str = "", null: bool = True) -> Check:
    def check(param: str, value) -> None:
        if type(value) is not int:  # (bool is not int here)
            if value is None and null:
                return
            raise _wrong_type(param, "an integer", value)
        if ok is not None and not ok(value):
            raise _out_of_range(param, why, value)
    return check


def _number(ok: Callable[[float], bool], why: str) -> Check:
    def check(param: str, value) -> None:
        t = type(value)
        if t is not float and t is not int:
            if value is None:
                return
            raise _wrong_type(param, "a number", value)
        if not ok(value):
            raise _out_of_range(param, why, value)
    return check


def _of_type(t: type, name: str, null: bool = True) -> Check:
    def check(param: str, value) -> None:
        if type(value) is not t and not (value is None and null):
            raise _wrong_type(param, name, value)
    return check


_string, _boolean, _object = _of_type(str, "a string"), _of_type(bool, "a boolean"), _of_type(dict, "an object")


def _stop(param: str, value) -> None:
    """OpenAI's `stop`: a string, null, or at most 4 strings."""
    if value is None or type(value) is str:
        return
    if type(value) is not list:
        raise _wrong_type(param, "a string, an array of strings or null", value)
    if len(value) > MAX_STOP:
        raise _invalid(param, f"Invalid value for '{param}': at most {MAX_STOP} stop sequences, got {len(value)}.")
    _strings(param, value)


def _strings(param: str, value: list) -> None:
    for i, s in enumerate(value):
        if type(s) is not str:
            raise _wrong_type(f"{param}[{i}]", "a string", s)


def _tgi_stop(param: str, value) -> None:
    if type(value) is not list:
        raise _wrong_type(param, "an array of strings", value)
    _strings(param, value)


def _logit_bias(param: str, value) -> None:
    if value is None:
        return
    if type(value) is not dict:
        raise _wrong_type(param, "an object", value)
    for token, bias in value.items():
        t = type(bias)
        if t is not float and t is not int:
            raise _wrong_type(f"{param}.{token}", "a number", bias)
        if not -100 <= bias <= 100:
            raise _out_of_range(f"{param}.{token}", "must be between -100 and 100", bias)


# --- chat messages and completion prompts ---------------------------------------------------

def _messages(param: str, value) -> None:
    if type(value) is not list:
        raise _wrong_type(param, "an array", value)
    if not value:
        raise _invalid(param, f"Invalid '{param}': empty array. Expected an array with at least 1 message.")
    for i, m in enumerate(value):
        if type(m) is not dict:
            raise _wrong_type(f"{param}[{i}]", "an object", m)
        if "role" not in m:
            raise _missing(f"{param}[{i}].role")
        role = m["role"]
        if type(role) is not str:
            raise _wrong_type(f"{param}[{i}].role", "a string", role)
        if role not in _ROLES:
            raise _invalid(f"{param}[{i}].role", f"Invalid '{param}[{i}].role': expected one of "
                                                 f"{', '.join(ROLES)}, but got {_show(role)}.")
        content = m.get("content")
        if content is not None and type(content) is not str:
            if type(content) is not list:
                raise _wrong_type(f"{param}[{i}].content", "a string, an array of content parts or null", content)
            _parts(f"{param}[{i}].content", content)
        name = m.get("name")
        if name is not None and type(name) is not str:
            raise _wrong_type(f"{param}[{i}].name", "a string", name)


def _parts(param: str, parts: list) -> None:
    """Content parts: objects with a string `type`; a text part has a string `text`. Other
    part types (image_url, input_audio, file...) are the engine's to judge."""
    for j, part in enumerate(parts):
        if type(part) is not dict:
            raise _wrong_type(f"{param}[{j}]", "an object", part)
        if "type" not in part:
            raise _missing(f"{param}[{j}].type")
        kind = part["type"]
        if type(kind) is not str:
            raise _wrong_type(f"{param}[{j}].type", "a string", kind)
        if kind == "text" and type(part.get("text")) is not str:
            if "text" not in part:
                raise _missing(f"{param}[{j}].text")
            raise _wrong_type(f"{param}[{j}].text", "a string", part["text"])


def _prompt(param: str, value) -> None:
    """A string, or a list of strings, of token ids, or of lists of token ids."""
    if type(value) is str:
        return
    expected = "a string, an array of strings, an array of token ids or an array of arrays of token ids"
    if type(value) is not list:
        raise _wrong_type(param, expected, value)
    if not value:
        raise _invalid(param, f"Invalid '{param}': empty array. Expected a string or a non-empty array.")
    first = type(value[0])
    if first is str:
        _strings(param, value)
    elif first is int:
        _token_ids(param, value)
    elif first is list:
        for i, ids in enumerate(value):
            if type(ids) is not list:
                raise _wrong_type(f"{param}[{i}]", "an array of token ids", ids)
            _token_ids(f"{param}[{i}]", ids)
    else:
        raise _wrong_type(f"{param}[0]", "a string, a token id or an array of token ids", value[0])


def _token_ids(param: str, ids: list) -> None:
    if all(type(t) is int for t in ids):
        return
    i = next(i for i, t in enumerate(ids) if type(t) is not int)
    raise _wrong_type(f"{param}[{i}]", "an integer (a token id)", ids[i])


# --- the tables: field -> check --------------------------------------------------------------

_OPENAI: dict[str, Check] = {
    "model": _string,
    "max_tokens": _integer(lambda v: v >= 1, "must be at least 1"),
    "max_completion_tokens": _integer(lambda v: v >= 1, "must be at least 1"),
    "n": _integer(lambda v: 1 <= v <= 128, "must be between 1 and 128"),
    "temperature": _number(lambda v: 0 <= v <= 2, "must be between 0 and 2"),
    "top_p": _number(lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "presence_penalty": _number(lambda v: -2 <= v <= 2, "must be between -2 and 2"),
    "frequency_penalty": _number(lambda v: -2 <= v <= 2, "must be between -2 and 2"),
    "stream": _boolean,
    "stream_options": _object,
    "stop": _stop,
    "seed": _integer(),
    "top_logprobs": _integer(lambda v: 0 <= v <= 20, "must be between 0 and 20"),
    "user": _string,
    "logit_bias": _logit_bias,
}
CHAT: dict[str, Check] = {**_OPENAI, "messages": _messages, "logprobs": _boolean}
COMPLETION: dict[str, Check] = {**_OPENAI, "prompt": _prompt,
                                "logprobs": _integer(lambda v: 0 <= v <= 5, "must be between 0 and 5")}
TGI_PARAMETERS: dict[str, Check] = {  # TGI's GenerateParameters, with TGI's own bounds
    "max_new_tokens": _integer(lambda v: v >= 1, "must be at least 1"),
    "temperature": _number(lambda v: v > 0, "must be strictly positive"),
    "top_p": _number(lambda v: 0 < v < 1, "must be greater than 0 and less than 1"),
    "top_k": _integer(lambda v: v > 0, "must be strictly positive"),
    "repetition_penalty": _number(lambda v: v > 0, "must be strictly positive"),
    "do_sample": _of_type(bool, "a boolean", null=False),
    "stop": _tgi_stop,
    "seed": _integer(lambda v: v >= 0, "must be at least 0"),
}


def _fields(body: dict, table: dict[str, Check], prefix: str = "") -> None:
    for key, value in body.items():
        fn = table.get(key)
        if fn is not None:
            fn(prefix + key, value)


# --- per kind --------------------------------------------------------------------------------

def _openai(body: dict, required: str, table: dict[str, Check]) -> None:
    if required not in body:
        raise _missing(required)
    _fields(body, table)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise _invalid("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")


def _tgi(body: dict) -> None:
    if "inputs" not in body:
        raise _missing("inputs")
    inputs = body["inputs"]
    if type(inputs) is not str:
        raise _wrong_type("inputs", "a string", inputs)
    if not inputs:
        raise _invalid("inputs", "Invalid value for 'inputs': must not be empty.")
    if "stream" in body and type(body["stream"]) is not bool:  # `POST /` streams with it
        raise _wrong_type("stream", "a boolean", body["stream"])
    if "parameters" in body:
        parameters = body["parameters"]
        if type(parameters) is not dict:
            raise _wrong_type("parameters", "an object", parameters)
        _fields(parameters, TGI_PARAMETERS, "parameters.")


def check(kind: str, body: dict) -> None:
    """Raise ErrorAnswer(400) for a body of `kind` ("chat", "completion", "tgi") that an engine
    must never see; pass any other kind."""
    if kind == "chat":
        _openai(body, "messages", CHAT)
    elif kind == "completion":
        _openai(body, "prompt", COMPLETION)
    elif kind == "tgi":
        _tgi(body)


# --- generation defaults the router applies (TGI; SGLang's OpenAI routes) --------------------

def apply_defaults(kind: str, body: dict, defaults: dict, top_k: bool = False) -> bool:
    """Write `defaults` (any of temperature, top_p, top_k, max_new_tokens) into a request for
    TGI (or SGLang's OpenAI routes) where the request does not set them; `top_k`: the engine's
    OpenAI routes take top_k. True if the body changed."""
    if not defaults:
        return False
    if kind == "tgi":
        return _tgi_defaults(body, defaults)
    if kind == "chat" or kind == "completion":
        return _openai_defaults(body, defaults, top_k)
    return False


def _put(into: dict, key: str, value) -> bool:
    """Set `key` where it is absent or null; True if it was set."""
    if into.get(key) is not None:
        return False
    into[key] = value
    return True


def _openai_defaults(body: dict, defaults: dict, top_k: bool) -> bool:
    """OpenAI routes: temperature (0 is greedy there), top_p below 1, max_new_tokens as
    `max_tokens`; top_k only where the engine takes it (SGLang; TGI's OpenAI routes take none;
    0 is off, which SGLang says as -1)."""
    changed = False
    if top_k and defaults.get("top_k") is not None:
        changed |= _put(body, "top_k", defaults["top_k"] or -1)
    temperature, top_p, most = defaults.get("temperature"), defaults.get("top_p"), defaults.get("max_new_tokens")
    if temperature is not None:
        changed |= _put(body, "temperature", temperature)
    if top_p is not None and top_p < 1:  # 1 is off, and TGI refuses it
        changed |= _put(body, "top_p", top_p)
    if most is not None and body.get("max_completion_tokens") is None:
        changed |= _put(body, "max_tokens", most)
    return changed


def _tgi_defaults(body: dict, defaults: dict) -> bool:
    """TGI's native API: into `parameters` (made if absent). Temperature 0 means greedy, which
    TGI says as `do_sample: false` (it refuses temperature 0); top_p 1 and top_k 0 mean off."""
    parameters = body.get("parameters")
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict:
        return False  # check() refuses it
    changed = False
    temperature, top_p, top_k = defaults.get("temperature"), defaults.get("top_p"), defaults.get("top_k")
    most = defaults.get("max_new_tokens")
    if temperature is not None and parameters.get("temperature") is None:
        if temperature > 0:
            changed |= _put(parameters, "temperature", temperature)
        else:  # greedy, unless the request says how to decode
            changed |= _put(parameters, "do_sample", False)
    if top_p is not None and 0 < top_p < 1:
        changed |= _put(parameters, "top_p", top_p)
    if top_k is not None and top_k > 0:
        changed |= _put(parameters, "top_k", top_k)
    if most is not None:
        changed |= _put(parameters, "max_new_tokens", most)
    if changed:
        body["parameters"] = parameters
    return changed
