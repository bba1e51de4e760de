import pytest

from tierguard import compare as comparators
from tierguard.compare import Comparator, Verdict, resolve

LABELS = {"type": "label", "labels": ["POSITIVE", "NEGATIVE", "NEUTRAL"]}
INVOICE = {"type": "json", "ignore_keys": ["notes"], "abs_tol": 0.01}

CASES = [
    # spec, primary, shadow, agree, reason fragment
    ("exact", "Billing", "  billing. ", True, "identical"),
    ("exact", "Billing", "Shipping", False, "differ"),
    ("exact", "a  b\nc!", "A B C", True, "identical"),
    (LABELS, "POSITIVE", "Sentiment: positive.", True, "same label POSITIVE"),
    (LABELS, "NEGATIVE", "POSITIVE", False, "NEGATIVE vs POSITIVE"),
    (LABELS, "I cannot tell", "NEUTRAL", False, "unparseable: primary answer has no allowed label"),
    (LABELS, "NEUTRAL", "POSITIVE or NEGATIVE", False, "several labels"),
    (LABELS, "NEGATIVELY", "NEGATIVE", False, "no allowed label"),
    (INVOICE, '{"total": 10.0, "notes": "a"}', '{"total": 10.004, "notes": "b"}', True, "1/1"),
    (INVOICE, '```json\n{"vendor": "Acme", "total": 3}\n```', 'Here: {"vendor": "Acme", "total": 3} ok',
     True, "2/2"),
    (INVOICE, '{"vendor": "Acme", "total": 3}', '{"vendor": "Acme", "total": 4}', False,
     "fields differ: total"),
    (INVOICE, '{"vendor": "Acme"}', "no json here", False, "unparseable: shadow answer has no JSON"),
    ({"type": "json"}, '{"a": [1, 2]}', '{"a": [2, 1]}', False, "fields differ"),
    ({"type": "json", "unordered_lists": True}, '{"a": [1, 2]}', '{"a": [2, 1]}', True, "match"),
    ({"type": "json", "min_score": 0.5}, '{"a": 1, "b": 2}', '{"a": 1, "b": 3}', True, "1/2"),
    ({"type": "json"}, '{"a": {"b": 1}}', '{"a": {"c": 1}}', False, "a.b, a.c"),
    ({"type": "numeric", "rel_tol": 0.01}, "Total: 1,000.5 EUR", "1000", True, "≈"),
    ({"type": "numeric", "abs_tol": 1}, "42", "45", False, "42 vs 45"),
    ({"type": "numeric"}, "forty-two", "42", False, "unparseable: primary answer has no number"),
    ({"type": "similarity", "threshold": 0.8}, "the cat sat on the mat", "The cat sat on a mat.",
     True, "f1 0.83"),
    ({"type": "similarity", "method": "rougeL", "threshold": 0.9}, "a b c d", "d c b a", False,
     "rougeL 0.25"),
]


@pytest.mark.parametrize(("spec", "primary", "shadow", "agree", "reason"), CASES)
def test_builtin_comparators(spec, primary, shadow, agree, reason):
    verdict = resolve(spec).compare(primary, shadow)
    assert verdict.agree is agree
    assert reason in verdict.reason
    assert 0.0 <= verdict.score <= 1.0
    if spec in ("exact", LABELS):  # all-or-nothing comparators
        assert verdict.score == (1.0 if agree else 0.0)


def test_json_score_is_share_of_matching_fields():
    v = resolve("json").compare('{"a": 1, "b": 2, "c": 3, "d": 4}', '{"a": 1, "b": 2, "c": 3, "d": 5}')
    assert v.agree is False
    assert v.score == pytest.approx(0.75)
    assert v.detail["differing"] == ["d"]


@pytest.mark.parametrize(("spec", "message"), [
    ("nope", "type: unknown comparator 'nope'"),
    ({"type": "label"}, "labels: required for label comparator"),
    ({"type": "label", "labels": []}, "labels: at least one label is required"),
    ({"type": "json", "ignore": ["x"]}, "ignore: unknown option for json comparator"),
    ({"type": "similarity", "method": "bleu"}, "method: must be 'f1' or 'rougeL'"),
    ({"labels": ["A"]}, "type: required"),
    ("no.such.module:Thing", "cannot import comparator"),
    (42, "must be a name or a mapping"),
])
def test_bad_specs_say_why(spec, message):
    with pytest.raises(ValueError, match=None) as err:
        resolve(spec)
    assert message in str(err.value)


class Shouty:
    """A custom comparator loaded by dotted path."""

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def compare(self, primary: str, shadow: str) -> Verdict:
        ok = primary.isupper() == shadow.isupper()
        return Verdict(ok, float(ok), "same shout" if ok else "shout mismatch")


def test_custom_comparator_by_dotted_path():
    c = resolve({"type": "tests.compare.test_comparators:Shouty", "minimum": 2})
    assert isinstance(c, Comparator)
    assert c.minimum == 2
    assert c.compare("HI", "YO").agree is True


def test_registry_is_the_single_source_of_names():
    assert set(comparators.COMPARATORS) == {"exact", "label", "json", "numeric", "similarity", "judge"}
