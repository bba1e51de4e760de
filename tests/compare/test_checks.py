"""Answer checks: every reason, every comparator family's format, pattern, schema, tool calls."""

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierguard.compare import REASONS, Checks, Failure, pattern_of, resolve
from tierguard.compare.checks import format_of
from tierguard.contract.messages import content_json_text

ALL = list(REASONS)
LABELS = {"type": "label", "labels": ["POSITIVE", "NEGATIVE"]}
SCHEMA = {"type": "object", "required": ["vendor", "total"],
          "properties": {"vendor": {"type": "string"}, "total": {"type": "number"},
                         "currency": {"enum": ["EUR", "USD"]}}}
INVOICE = {"type": "json", "ignore_keys": ["notes"], "schema": SCHEMA}


def checks(spec, reasons=ALL):
    return Checks(reasons, resolve(spec), pattern_of(spec))


def answer(text=None, stop_reason="end_turn", blocks=None):
    content = blocks if blocks is not None else ([] if text is None else [{"type": "text", "text": text}])
    return {"type": "message", "role": "assistant", "content": content, "stop_reason": stop_reason}


def reason(found):
    return None if found is None else found.reason


@pytest.mark.parametrize(("spec", "text", "stop", "expected"), [
    (LABELS, "POSITIVE", "end_turn", None),
    (LABELS, "Sentiment: negative.", "end_turn", None),
    (LABELS, "MAYBE", "end_turn", "invalid"),
    (LABELS, "POSITIVE or NEGATIVE", "end_turn", "invalid"),
    (LABELS, "NEGATIVELY", "end_turn", "invalid"),
    (LABELS, "", "end_turn", "empty"),
    (LABELS, "  \n\t ", "end_turn", "empty"),
    (LABELS, "I can't help with that.", "refusal", "refusal"),
    (LABELS, "POSI", "max_tokens", "truncated"),
    (INVOICE, '{"vendor": "Acme", "total": 3.5, "currency": "EUR"}', "end_turn", None),
    (INVOICE, 'Here it is:\n```json\n{"vendor": "Acme", "total": 3}\n```', "end_turn", None),
    (INVOICE, '{"vendor": "Acme", "tot', "end_turn", "invalid"),
    (INVOICE, '{"vendor": "Acme", "total": "3"}', "end_turn", "invalid"),
    (INVOICE, '{"vendor": "Acme", "total": 3, "currency": "JPY"}', "end_turn", "invalid"),
    (INVOICE, '{"vendor": "Acme", "tot', "max_tokens", "truncated"),
    ({"type": "json"}, '{"anything": [1, 2]}', "end_turn", None),
    ({"type": "json"}, "no json here", "end_turn", "invalid"),
    ({"type": "numeric", "rel_tol": 0.01}, "Total: 1,000.5 EUR", "end_turn", None),
    ({"type": "numeric"}, "about a thousand", "end_turn", "invalid"),
    ("exact", "anything at all", "end_turn", None),
    ({"type": "similarity", "threshold": 0.5}, "whatever words", "end_turn", None),
    ({"type": "judge"}, "a long essay", "end_turn", None),
    ("exact", "", "end_turn", "empty"),
    ("exact", "Sorry.", "refusal", "refusal"),
])
def test_each_reason_for_each_family(spec, text, stop, expected):
    assert reason(checks(spec).check(answer(text, stop))) == expected


def test_a_failure_says_why_in_words():
    found = checks(LABELS).check(answer("MAYBE"))
    assert found == Failure("invalid", "the answer 'MAYBE' has no allowed label (POSITIVE, NEGATIVE)")
    several = checks(LABELS).check(answer("POSITIVE or NEGATIVE")).detail
    assert "several labels (negative, positive)" in several
    assert checks(INVOICE).check(answer('{"vendor": "Acme", "total": "3"}')).detail == \
        "schema: data.total must be number"
    assert "holds no JSON value" in checks(INVOICE).check(answer('{"vendor": "Ac')).detail
    assert "holds no number" in checks({"type": "numeric"}).check(answer("none")).detail
    assert checks(LABELS).check(answer("POSI", "max_tokens")).detail == \
        "the answer was cut at max_tokens after 4 characters"
    assert "refused" in checks(LABELS).check(answer("No.", "refusal")).detail
    assert checks(LABELS).check(answer("")).detail == "the answer has no text and no tool call"
    long = checks(LABELS).check(answer("x" * 500)).detail
    assert len(long) < 120 and "…" in long


def test_reasons_are_checked_in_a_fixed_order_and_only_those_listed():
    cut_refusal = answer("", "refusal")
    assert reason(checks(LABELS).check(cut_refusal)) == "empty"
    assert reason(checks(LABELS, ["refusal", "invalid"]).check(cut_refusal)) == "refusal"
    assert reason(checks(LABELS, ["invalid"]).check(cut_refusal)) == "invalid"
    cut = answer('{"vendor": "Acme", "tot', "max_tokens")
    assert reason(checks(INVOICE, ["invalid", "truncated"]).check(cut)) == "truncated"
    assert reason(checks(INVOICE, ["invalid"]).check(cut)) == "invalid"
    assert checks(INVOICE, ["empty", "refusal"]).check(cut) is None
    assert checks(LABELS, ["invalid", "empty"]).reasons == ("empty", "invalid")


def test_no_reasons_no_checks():
    none = checks(LABELS, [])
    assert not none and none.reasons == ()
    for broken in (answer(""), answer("MAYBE", "refusal"), answer("POS", "max_tokens"), {}):
        assert none.check(broken) is None
    assert Checks().check(answer("")) is None


def test_unknown_reasons_are_refused():
    with pytest.raises(ValueError, match="escalate_on: 'slow' is not one of empty, refusal"):
        Checks(["slow"])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("POSITIVENGAposit vng.:,!?\n-_1")), max_size=30))
def test_label_format_is_the_label_comparators_own_reading(text):
    spec = LABELS
    unreadable = resolve(spec).compare(text, "POSITIVE").reason.startswith("unparseable")
    assert (reason(checks(spec, ["invalid"]).check(answer(text))) == "invalid") == unreadable


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r'\s*(```json\n)?\{"a": ?[0-9]{1,3}\}?(```)?\s*')))
def test_json_and_numeric_formats_are_their_comparators_own_reading(text):
    for spec in ({"type": "json"}, {"type": "numeric"}):
        unreadable = resolve(spec).compare(text, text).reason.startswith("unparseable")
        assert (checks(spec, ["invalid"]).check_text(text, "end_turn") is not None) == unreadable


@pytest.mark.parametrize("spec", [
    {"type": "exact", "pattern": r"\A(YES|NO)\Z"},
    {"type": "label", "labels": ["YES", "NO"], "pattern": r"\A(YES|NO)\Z"},
    {"type": "json", "pattern": r"\A(YES|NO)\Z"},
    {"type": "numeric", "pattern": r"\A(YES|NO)\Z"},
    {"type": "similarity", "pattern": r"\A(YES|NO)\Z"},
    {"type": "judge", "pattern": r"\A(YES|NO)\Z"},
    {"type": "tests.pipeline.slow_comparator:Slow", "pattern": r"\A(YES|NO)\Z"},
])
def test_every_family_takes_a_pattern(spec):
    resolve(spec)  # the comparator itself never sees it
    found = checks(spec, ["invalid"]).check(answer("yes, probably"))
    assert reason(found) == "invalid"
    if spec["type"] in ("exact", "similarity", "judge", "tests.pipeline.slow_comparator:Slow"):
        assert found.detail == r"the answer 'yes, probably' does not match the pattern \A(YES|NO)\Z"
        assert checks(spec, ["invalid"]).check(answer("NO")) is None


def test_pattern_is_searched_not_matched_whole():
    spec = {"type": "exact", "pattern": "ticket #[0-9]+"}
    assert checks(spec).check(answer("Opened ticket #123 for you.")) is None
    assert reason(checks(spec).check(answer("Opened a ticket."))) == "invalid"


def test_format_and_pattern_both_apply():
    spec = {**LABELS, "pattern": r"\A[A-Z]+\Z"}
    assert checks(spec).check(answer("POSITIVE")) is None
    assert "does not match the pattern" in checks(spec).check(answer("positive")).detail
    assert "no allowed label" in checks(spec).check(answer("MAYBE")).detail


def test_comparators_without_a_format_have_none():
    for spec in ("exact", {"type": "similarity"}, {"type": "judge"}):
        assert format_of(resolve(spec)) is None
    assert checks("exact", ["invalid"]).check(answer("??? !!!")) is None


TOOL = {"type": "tool_use", "id": "toolu_1", "name": "classify", "input": {"label": "POSITIVE"}}


def test_tool_calls_are_checked_as_the_comparators_see_them():
    only_tool = answer(blocks=[TOOL])
    assert checks(LABELS).check(only_tool) is None  # not empty; its JSON holds the label
    wrong = answer(blocks=[{**TOOL, "input": {"label": "MAYBE"}}])
    assert reason(checks(LABELS).check(wrong)) == "invalid"
    tool_schema = {"type": "json", "schema": {"type": "object", "required": ["tool", "input"],
                                              "properties": {"input": {"required": ["label"]}}}}
    assert checks(tool_schema).check(answer(blocks=[{"type": "text", "text": "Calling."}, TOOL])) is None
    bad = answer(blocks=[{**TOOL, "input": {"name": "x"}}])
    assert checks(tool_schema).check(bad).detail == "schema: data.input must contain ['label'] properties"
    assert reason(checks(LABELS, ["empty"]).check(answer(blocks=[{"type": "thinking", "thinking": "hm"}]))) \
        == "empty"


def test_check_text_agrees_with_check():
    """check_text takes the comparable text: a stream's text blocks and its tool calls as JSON."""
    c = checks(INVOICE)
    for text, stop, tool in [("", "end_turn", False), ("", "tool_use", True), ("MAYBE", "refusal", False),
                             ('{"vendor": "A", "total": 1}', "end_turn", False),
                             ('{"vendor": "A"', "max_tokens", False), ('{"vendor": 1}', "end_turn", False)]:
        blocks = ([{"type": "text", "text": text}] if text else []) + ([TOOL] if tool else [])
        found = c.check(answer(blocks=blocks, stop_reason=stop))
        assert c.check_text(content_json_text(blocks), stop, tool) == found
        if not tool:
            assert c.check_text(text, stop) == found


def test_sdk_messages_are_checked_like_their_json():
    c = checks(LABELS)
    for body in (answer("MAYBE"), answer("NEGATIVE"), answer("", "refusal"), answer(blocks=[TOOL])):
        message = anthropic.types.Message.model_validate(
            {**body, "id": "msg_1", "model": "claude-haiku-4-5", "stop_sequence": None,
             "usage": {"input_tokens": 1, "output_tokens": 1}})
        assert c.check(message) == c.check(body)


@pytest.mark.parametrize(("spec", "problem"), [
    ({"type": "json", "schema": {"type": "strnig"}}, "schema: not a valid JSON Schema"),
    ({"type": "json", "schema": {"required": "total"}}, "schema: not a valid JSON Schema (required must be"),
    ({"type": "json", "schema": {"properties": [1]}}, "schema: not a valid JSON Schema"),
    ({"type": "json", "schema": ["not", "a", "schema"]}, "schema: must be a mapping"),
    ({"type": "json", "schema": {"$ref": "https://example.invalid/s.json"}}, "schema: $ref "),
    ({"type": "json", "schema": {"properties": {"a": {"$ref": "other.json#/a"}}}},
     "schema: $ref 'other.json#/a'"),
    ({**LABELS, "schema": SCHEMA}, "schema: unknown option for label comparator"),
    ({"type": "exact", "pattern": "(unclosed"}, "pattern: not a valid regular expression"),
    ({"type": "exact", "pattern": ""}, "pattern: must be a non-empty regular expression"),
    ({"type": "json", "pattern": 5}, "pattern: must be a non-empty regular expression"),
])
def test_bad_schemas_and_patterns_are_refused_naming_the_field(spec, problem):
    with pytest.raises(ValueError) as err:
        resolve(spec)
    assert str(err.value).startswith(problem), str(err.value)


def test_local_references_resolve_without_fetching():
    schema = {"$id": "https://example.invalid/invoice.json", "definitions": {"money": {"type": "number"}},
              "type": "object", "properties": {"total": {"$ref": "#/definitions/money"}}}
    c = checks({"type": "json", "schema": schema})
    assert c.check(answer('{"total": 3}')) is None
    assert c.check(answer('{"total": "3"}')).detail == "schema: data.total must be number"


def test_the_schema_does_not_change_how_answers_compare():
    with_schema, without = resolve(INVOICE), resolve({"type": "json", "ignore_keys": ["notes"]})
    for a, b in [('{"total": "3"}', '{"total": "3"}'), ('{"vendor": "A"}', '{"vendor": "B"}')]:
        assert with_schema.compare(a, b) == without.compare(a, b)
