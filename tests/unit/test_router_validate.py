"""The router's request checks (modelship.router.validate): what it refuses, in OpenAI's shape,
what it lets through untouched, and the TGI generation defaults it writes."""

from __future__ import annotations

import copy

import orjson
import pytest

from modelship.router.errors import ErrorAnswer
from modelship.router.validate import apply_defaults, check

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def chat(**fields) -> dict:
    return {"model": "m", "messages": copy.deepcopy(MSGS), **fields}


def completion(**fields) -> dict:
    return {"model": "m", "prompt": "Once", **fields}


def tgi(**parameters) -> dict:
    return {"inputs": "Once", "parameters": parameters}


MISSING, TYPE, VALUE = "missing_required_parameter", "invalid_type", "invalid_value"

# (id, kind, body, param, code, a fragment of the message)
BAD = [
    ("chat-no-messages", "chat", {"model": "m"}, "messages", MISSING, "Missing required parameter: 'messages'."),
    ("chat-messages-string", "chat", {"messages": "hi"}, "messages", TYPE,
     "Invalid type for 'messages': expected an array, but got a string instead."),
    ("chat-messages-empty", "chat", {"messages": []}, "messages", VALUE, "empty array"),
    ("chat-message-not-object", "chat", {"messages": ["hi"]}, "messages[0]", TYPE, "expected an object"),
    ("chat-message-no-role", "chat", {"messages": [{"content": "hi"}]}, "messages[0].role", MISSING,
     "Missing required parameter: 'messages[0].role'."),
    ("chat-role-robot", "chat", {"messages": [MSGS[0], {"role": "robot", "content": "x"}]}, "messages[1].role", VALUE,
     "Invalid 'messages[1].role': expected one of system, user, assistant, tool, function, developer, "
     "but got 'robot'."),
    ("chat-role-number", "chat", {"messages": [{"role": 1, "content": "x"}]}, "messages[0].role", TYPE,
     "expected a string, but got an integer"),
    ("chat-role-list", "chat", {"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role", TYPE,
     "got an array"),
    ("chat-content-number", "chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", TYPE,
     "got an integer instead"),
    ("chat-part-not-object", "chat", {"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]",
     TYPE, "expected an object"),
    ("chat-part-no-type", "chat", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
     "messages[0].content[0].type", MISSING, "'messages[0].content[0].type'"),
    ("chat-text-part-no-text", "chat", {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text", MISSING, "'messages[0].content[0].text'"),
    ("chat-text-part-text-number", "chat",
     {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
     "messages[0].content[0].text", TYPE, "expected a string"),
    ("chat-name-number", "chat", {"messages": [{"role": "user", "content": "x", "name": 7}]}, "messages[0].name",
     TYPE, "expected a string"),
    ("chat-logprobs-int", "chat", chat(logprobs=3), "logprobs", TYPE, "expected a boolean"),
    ("model-number", "chat", chat(model=7), "model", TYPE, "Invalid type for 'model'"),
    ("max_tokens-negative", "chat", chat(max_tokens=-5), "max_tokens", VALUE,
     "Invalid value for 'max_tokens': must be at least 1, got -5."),
    ("max_tokens-zero", "completion", completion(max_tokens=0), "max_tokens", VALUE, "must be at least 1, got 0"),
    ("max_tokens-true", "chat", chat(max_tokens=True), "max_tokens", TYPE,
     "expected an integer, but got a boolean instead"),
    ("max_tokens-decimal", "chat", chat(max_tokens=1.5), "max_tokens", TYPE, "got a decimal number instead"),
    ("max_tokens-string", "chat", chat(max_tokens="100"), "max_tokens", TYPE, "got a string instead"),
    ("max_completion_tokens-zero", "chat", chat(max_completion_tokens=0), "max_completion_tokens", VALUE,
     "must be at least 1"),
    ("temperature-3", "chat", chat(temperature=3), "temperature", VALUE, "must be between 0 and 2, got 3"),
    ("temperature-negative", "completion", completion(temperature=-0.1), "temperature", VALUE, "between 0 and 2"),
    ("temperature-string", "chat", chat(temperature="hot"), "temperature", TYPE, "expected a number"),
    ("temperature-bool", "chat", chat(temperature=False), "temperature", TYPE, "got a boolean"),
    ("top_p-1.5", "chat", chat(top_p=1.5), "top_p", VALUE, "between 0 and 1"),
    ("presence_penalty-3", "chat", chat(presence_penalty=3), "presence_penalty", VALUE, "between -2 and 2"),
    ("frequency_penalty--2.5", "completion", completion(frequency_penalty=-2.5), "frequency_penalty", VALUE,
     "between -2 and 2"),
    ("n-0", "chat", chat(n=0), "n", VALUE, "must be between 1 and 128, got 0"),
    ("n-129", "completion", completion(n=129), "n", VALUE, "got 129"),
    ("stream-yes", "chat", chat(stream="yes"), "stream", TYPE,
     "Invalid type for 'stream': expected a boolean, but got a string instead."),
    ("stream_options-without-stream", "chat", chat(stream_options={"include_usage": True}), "stream_options", VALUE,
     "The 'stream_options' parameter is only allowed when 'stream' is enabled."),
    ("stream_options-stream-false", "completion", completion(stream=False, stream_options={}), "stream_options",
     VALUE, "only allowed when 'stream' is enabled"),
    ("stream_options-list", "chat", chat(stream=True, stream_options=[]), "stream_options", TYPE,
     "expected an object"),
    ("stop-5-strings", "chat", chat(stop=["a", "b", "c", "d", "e"]), "stop", VALUE, "at most 4 stop sequences, got 5"),
    ("stop-number-in-list", "chat", chat(stop=["a", 1]), "stop[1]", TYPE, "expected a string"),
    ("stop-number", "completion", completion(stop=5), "stop", TYPE, "got an integer"),
    ("seed-decimal", "chat", chat(seed=1.5), "seed", TYPE, "expected an integer"),
    ("top_logprobs-21", "chat", chat(top_logprobs=21), "top_logprobs", VALUE, "between 0 and 20"),
    ("user-number", "chat", chat(user=5), "user", TYPE, "expected a string"),
    ("logit_bias-list", "chat", chat(logit_bias=[1]), "logit_bias", TYPE, "expected an object"),
    ("logit_bias-200", "chat", chat(logit_bias={"50256": 200}), "logit_bias.50256", VALUE,
     "between -100 and 100, got 200"),
    ("logit_bias-string", "completion", completion(logit_bias={"1": "x"}), "logit_bias.1", TYPE, "expected a number"),
    ("prompt-missing", "completion", {"model": "m"}, "prompt", MISSING, "Missing required parameter: 'prompt'."),
    ("prompt-dict", "completion", {"prompt": {"text": "x"}}, "prompt", TYPE, "got an object instead"),
    ("prompt-null", "completion", {"prompt": None}, "prompt", TYPE, "got null instead"),
    ("prompt-empty-list", "completion", {"prompt": []}, "prompt", VALUE, "empty array"),
    ("prompt-mixed-strings", "completion", {"prompt": ["a", 1]}, "prompt[1]", TYPE, "expected a string"),
    ("prompt-token-ids-with-string", "completion", {"prompt": [1, 2, "x"]}, "prompt[2]", TYPE, "token id"),
    ("prompt-token-ids-with-bool", "completion", {"prompt": [1, True]}, "prompt[1]", TYPE, "got a boolean"),
    ("prompt-nested-bad", "completion", {"prompt": [[1, 2], [3, 4.5]]}, "prompt[1][1]", TYPE, "decimal number"),
    ("prompt-nested-not-list", "completion", {"prompt": [[1], 2]}, "prompt[1]", TYPE, "array of token ids"),
    ("prompt-list-of-objects", "completion", {"prompt": [{}]}, "prompt[0]", TYPE, "got an object"),
    ("completion-logprobs-6", "completion", completion(logprobs=6), "logprobs", VALUE, "between 0 and 5"),
    ("completion-logprobs-bool", "completion", completion(logprobs=True), "logprobs", TYPE, "expected an integer"),
    ("tgi-inputs-missing", "tgi", {"parameters": {}}, "inputs", MISSING, "Missing required parameter: 'inputs'."),
    ("tgi-inputs-list", "tgi", {"inputs": ["a"]}, "inputs", TYPE, "expected a string"),
    ("tgi-inputs-empty", "tgi", {"inputs": ""}, "inputs", VALUE, "must not be empty"),
    ("tgi-parameters-list", "tgi", {"inputs": "x", "parameters": []}, "parameters", TYPE, "expected an object"),
    ("tgi-parameters-null", "tgi", {"inputs": "x", "parameters": None}, "parameters", TYPE, "got null"),
    ("tgi-stream-string", "tgi", {"inputs": "x", "stream": "true"}, "stream", TYPE, "expected a boolean"),
    ("tgi-temperature-0", "tgi", tgi(temperature=0), "parameters.temperature", VALUE,
     "Invalid value for 'parameters.temperature': must be strictly positive, got 0."),
    ("tgi-temperature-string", "tgi", tgi(temperature="1"), "parameters.temperature", TYPE, "expected a number"),
    ("tgi-top_p-1", "tgi", tgi(top_p=1.0), "parameters.top_p", VALUE,
     "'parameters.top_p': must be greater than 0 and less than 1, got 1.0"),
    ("tgi-top_p-0", "tgi", tgi(top_p=0), "parameters.top_p", VALUE, "greater than 0"),
    ("tgi-max_new_tokens-0", "tgi", tgi(max_new_tokens=0), "parameters.max_new_tokens", VALUE,
     "must be at least 1, got 0"),
    ("tgi-max_new_tokens-decimal", "tgi", tgi(max_new_tokens=10.0), "parameters.max_new_tokens", TYPE,
     "expected an integer"),
    ("tgi-top_k-0", "tgi", tgi(top_k=0), "parameters.top_k", VALUE, "strictly positive"),
    ("tgi-repetition_penalty-0", "tgi", tgi(repetition_penalty=0), "parameters.repetition_penalty", VALUE,
     "strictly positive"),
    ("tgi-do_sample-string", "tgi", tgi(do_sample="yes"), "parameters.do_sample", TYPE, "expected a boolean"),
    ("tgi-do_sample-null", "tgi", tgi(do_sample=None), "parameters.do_sample", TYPE, "got null"),
    ("tgi-stop-string", "tgi", tgi(stop="\n"), "parameters.stop", TYPE, "an array of strings"),
    ("tgi-stop-number-in-list", "tgi", tgi(stop=["a", 2]), "parameters.stop[1]", TYPE, "expected a string"),
    ("tgi-seed-negative", "tgi", tgi(seed=-1), "parameters.seed", VALUE, "must be at least 0, got -1"),
]


@pytest.mark.parametrize(("kind", "body", "param", "code", "fragment"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_a_bad_body_is_refused_the_way_openai_answers(kind, body, param, code, fragment):
    with pytest.raises(ErrorAnswer) as caught:
        check(kind, body)
    e = caught.value
    assert (e.status, e.param, e.code, e.kind) == (400, param, code, "invalid_request_error")
    assert fragment in e.message
    assert orjson.loads(e.body()) == {"error": {"message": e.message, "type": "invalid_request_error",
                                                "param": param, "code": code}}


GOOD = [
    ("chat-minimal", "chat", {"messages": [{"role": "user", "content": "Hi"}]}),
    ("chat-typical", "chat", chat(max_tokens=64, stream=True, temperature=0.7, top_p=1, n=1, seed=3)),
    ("chat-unknown-fields", "chat", chat(cache_prompt=True, n_probs=3, grammar={"type": "json"},
                                         response_format={"type": "json_object"}, tools=[{"x": 1}])),
    ("chat-image-part", "chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
    ("chat-tool-messages", "chat", {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                               "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"}]}),
    ("chat-assistant-no-content", "chat", {"messages": [{"role": "assistant", "tool_calls": []}]}),
    ("chat-every-role", "chat", {"messages": [{"role": r, "content": "x", "name": "n"} for r in
                                              ("system", "user", "assistant", "tool", "function", "developer")]}),
    ("chat-empty-parts", "chat", {"messages": [{"role": "user", "content": []}]}),
    ("chat-nulls-are-not-given", "chat", chat(model=None, max_tokens=None, temperature=None, stop=None, n=None,
                                              stream_options=None, logit_bias=None, user=None)),
    ("chat-stream-options-with-stream", "chat", chat(stream=True, stream_options={"include_usage": True})),
    ("chat-stop-four", "chat", chat(stop=["a", "b", "c", "d"])),
    ("chat-logprobs", "chat", chat(logprobs=True, top_logprobs=20)),
    ("chat-edges", "chat", chat(temperature=0, top_p=0, presence_penalty=-2, frequency_penalty=2, n=128,
                                max_completion_tokens=1, logit_bias={"1": -100, "2": 100.0})),
    ("completion-string", "completion", completion(stop="\n", logprobs=5, echo=True, suffix="x")),
    ("completion-empty-string", "completion", {"prompt": ""}),
    ("completion-strings", "completion", {"prompt": ["a", "b"]}),
    ("completion-token-ids", "completion", {"prompt": [1, 2, 3]}),
    ("completion-lists-of-token-ids", "completion", {"prompt": [[1, 2], [3], []]}),
    ("tgi-inputs-only", "tgi", {"inputs": "Once"}),
    ("tgi-typical", "tgi", tgi(max_new_tokens=20, temperature=0.5, top_p=0.9, top_k=40, repetition_penalty=1.1,
                               do_sample=True, stop=["\n"], seed=0, details=True)),
    ("tgi-nulls", "tgi", tgi(max_new_tokens=None, temperature=None, top_p=None, top_k=None, seed=None)),
    ("tgi-stream-and-extras", "tgi", {"inputs": "x", "stream": True, "parameters": {"grammar": {"type": "json"},
                                                                                     "truncate": 100}}),
    ("unknown-kind", "info", {}),
]


@pytest.mark.parametrize(("kind", "body"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_a_good_body_passes_untouched(kind, body):
    before = copy.deepcopy(body)
    check(kind, body)
    assert body == before


def test_an_error_answer_without_a_param_writes_null():
    assert orjson.loads(ErrorAnswer(404, "no", code="not_found").body())["error"] == {
        "message": "no", "type": "invalid_request_error", "param": None, "code": "not_found"}


def test_a_long_value_is_cut_in_the_message():
    with pytest.raises(ErrorAnswer) as caught:
        check("chat", {"messages": [{"role": "x" * 1000}]})
    assert len(caught.value.message) < 200


# (id, kind, body, defaults, the body after, changed)
DEFAULTS = [
    ("chat-all-absent", "chat", {"messages": MSGS}, {"temperature": 0.2, "top_p": 0.9, "top_k": 40,
                                                     "max_new_tokens": 64},
     {"messages": MSGS, "temperature": 0.2, "top_p": 0.9, "max_tokens": 64}, True),
    ("chat-all-present", "chat", {"temperature": 1, "top_p": 0.5, "max_tokens": 9},
     {"temperature": 0.2, "top_p": 0.9, "max_new_tokens": 64}, {"temperature": 1, "top_p": 0.5, "max_tokens": 9},
     False),
    ("chat-null-is-absent", "chat", {"temperature": None}, {"temperature": 0.2}, {"temperature": 0.2}, True),
    ("chat-max_completion_tokens-set", "chat", {"max_completion_tokens": 9}, {"max_new_tokens": 64},
     {"max_completion_tokens": 9}, False),
    ("chat-temperature-0", "chat", {}, {"temperature": 0}, {"temperature": 0}, True),
    ("chat-top_p-1-is-off", "chat", {}, {"top_p": 1.0}, {}, False),
    ("chat-top_k-only", "chat", {}, {"top_k": 40}, {}, False),
    ("completion-max_tokens", "completion", {"prompt": "x"}, {"max_new_tokens": 5}, {"prompt": "x", "max_tokens": 5},
     True),
    ("no-defaults", "chat", {}, {}, {}, False),
    ("none-defaults", "tgi", {"inputs": "x"}, {"temperature": None, "top_k": None}, {"inputs": "x"}, False),
    ("tgi-no-parameters", "tgi", {"inputs": "x"}, {"temperature": 0.2, "top_p": 0.9, "top_k": 40,
                                                   "max_new_tokens": 64},
     {"inputs": "x", "parameters": {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_new_tokens": 64}}, True),
    ("tgi-some-set", "tgi", tgi(temperature=1.5, max_new_tokens=3), {"temperature": 0.2, "top_k": 40,
                                                                     "max_new_tokens": 64},
     tgi(temperature=1.5, max_new_tokens=3, top_k=40), True),
    ("tgi-all-set", "tgi", tgi(temperature=1.5, top_p=0.5, top_k=1, max_new_tokens=3),
     {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_new_tokens": 64},
     tgi(temperature=1.5, top_p=0.5, top_k=1, max_new_tokens=3), False),
    ("tgi-temperature-0-is-greedy", "tgi", {"inputs": "x"}, {"temperature": 0},
     {"inputs": "x", "parameters": {"do_sample": False}}, True),
    ("tgi-temperature-0-do_sample-set", "tgi", tgi(do_sample=True), {"temperature": 0}, tgi(do_sample=True), False),
    ("tgi-temperature-0-temperature-set", "tgi", tgi(temperature=0.7), {"temperature": 0}, tgi(temperature=0.7),
     False),
    ("tgi-temperature-leaves-do_sample", "tgi", tgi(do_sample=False), {"temperature": 0.3},
     tgi(do_sample=False, temperature=0.3), True),
    ("tgi-top_p-1-is-off", "tgi", {"inputs": "x"}, {"top_p": 1.0}, {"inputs": "x"}, False),
    ("tgi-top_k-0-is-off", "tgi", {"inputs": "x"}, {"top_k": 0}, {"inputs": "x"}, False),
    ("tgi-null-max_new_tokens", "tgi", tgi(max_new_tokens=None), {"max_new_tokens": 8}, tgi(max_new_tokens=8), True),
    ("tgi-parameters-not-object", "tgi", {"inputs": "x", "parameters": []}, {"top_k": 3},
     {"inputs": "x", "parameters": []}, False),
    ("unknown-kind", "info", {}, {"temperature": 0.2}, {}, False),
]


@pytest.mark.parametrize(("kind", "body", "defaults", "after", "changed"), [d[1:] for d in DEFAULTS],
                         ids=[d[0] for d in DEFAULTS])
def test_defaults_fill_only_what_the_request_leaves_unset(kind, body, defaults, after, changed):
    body = copy.deepcopy(body)
    assert apply_defaults(kind, body, defaults) is changed
    assert body == after


@pytest.mark.parametrize("kind, body, defaults", [(d[1], d[2], d[3]) for d in DEFAULTS if d[1] in ("chat", "tgi")
                                                   and d[0] not in ("tgi-parameters-not-object",)],
                         ids=[d[0] for d in DEFAULTS if d[1] in ("chat", "tgi")
                              and d[0] not in ("tgi-parameters-not-object",)])
def test_a_body_with_defaults_still_passes_the_checks(kind, body, defaults):
    body = copy.deepcopy(body)
    if kind == "chat":
        body.setdefault("messages", MSGS)
    apply_defaults(kind, body, defaults)
    check(kind, body)
