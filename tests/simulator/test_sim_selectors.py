"""Label and field selectors parse and match like k8s.io/apimachinery's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.simulator.selectors import (
    FieldRequirement,
    Op,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "web", "tier": "frontend", "env": "prod", "version": "3", "empty": ""}

# (selector, matches LABELS?)
LABEL_MATCHES = [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app=api", False),
    ("app!=api", True),
    ("app!=web", False),
    ("missing!=x", True),  # != matches objects without the label
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("app in (web,api)", True),
    ("app in (api)", False),
    ("app notin (api,db)", True),
    ("app notin (web)", False),
    ("missing notin (x)", True),
    ("missing in (x)", False),
    ("app=web,tier=frontend", True),
    ("app=web,tier=backend", False),
    ("app = web , tier in ( frontend , backend )", True),
    ("app in (web), !missing, env", True),
    ("empty=", True),
    ("empty==", True),
    ("app=", False),
    ("empty in (,x)", True),
    ("empty in (x,)", True),
    ("version>2", True),
    ("version>3", False),
    ("version<4", True),
    ("app>1", False),  # not an integer label: never matches
    ("example.com/team!=x", True),
    ("in=web", False),  # `in` is a key here, not the operator
    ("app in (in,web)", True),  # and a value here
]


@pytest.mark.parametrize(("text", "expected"), LABEL_MATCHES)
def test_label_selector_matches(text: str, expected: bool) -> None:
    assert parse_label_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app in ()", "values set can't be empty"),
        ("app in web", "expected: '('"),
        ("app in (web", "expected: ',' or ')'"),
        ("app=web tier=x", "expected: ',' or 'end of string'"),
        ("app=web,", "identifier after ','"),
        (",app", "expected: !, identifier, or 'end of string'"),
        ("=web", "expected: !, identifier, or 'end of string'"),
        ("app=(web)", "expected: identifier"),
        ("app>x", "must be an integer"),
        ("app===web", "expected"),
        ("!app=web", "expected: ',' or 'end of string'"),
        ("-app=web", "unable to parse requirement"),
        ("app=-web", "a valid label must be"),
        ("a/b/c=web", "unable to parse requirement"),
        ("Example.COM/app=web", "prefix part"),
        ("app=" + "v" * 64, "a valid label must be"),
        ("app in (x y)", "expected: ',' or ')'"),
        ("app notin", "expected: '('"),
        ("app!!=x", "expected"),
    ],
)
def test_label_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_label_selector(text)
    assert message in str(caught.value)


def test_label_requirements_are_parsed_in_order_with_sorted_value_sets() -> None:
    selector = parse_label_selector("b in (z, y), !a, c")
    assert [(r.key, r.op, r.values) for r in selector.requirements] == [
        ("b", Op.IN, ("y", "z")),
        ("a", Op.DOES_NOT_EXIST, ()),
        ("c", Op.EXISTS, ()),
    ]


def test_a_label_selector_matches_objects_without_labels_only_through_negations() -> None:
    assert parse_label_selector("!app,x notin (y),z!=1").matches(None)
    assert not parse_label_selector("app").matches(None)


label_values = st.text(alphabet="abc", min_size=0, max_size=2)
label_sets = st.dictionaries(st.sampled_from(["a", "b", "c"]), label_values, max_size=3)
# `key in ()` is a parse error, so a set holds at least one non-empty value here.
set_values = st.lists(st.text(alphabet="abc", min_size=1, max_size=2), min_size=1, max_size=3)


@given(labels=label_sets, key=st.sampled_from(["a", "b", "c"]), values=set_values)
def test_set_based_requirements_agree_with_their_definition(
    labels: dict[str, str], key: str, values: list[str]
) -> None:
    listed = ",".join(values)
    assert parse_label_selector(f"{key} in ({listed})").matches(labels) == (
        key in labels and labels[key] in values
    )
    assert parse_label_selector(f"{key} notin ({listed})").matches(labels) == (
        key not in labels or labels[key] not in values
    )
    value = values[0]
    assert parse_label_selector(f"{key}={value}").matches(labels) == (labels.get(key) == value)
    assert parse_label_selector(f"{key}!={value}").matches(labels) == (labels.get(key) != value)


FIELDS = {
    "spec.nodeName": "node-a",
    "metadata.name": "web-1",
    "metadata.namespace": "prod",
    "status.phase": "",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("spec.nodeName=node-a", True),
        ("spec.nodeName==node-a", True),
        ("spec.nodeName=node-b", False),
        ("spec.nodeName!=node-b", True),
        ("spec.nodeName!=node-a", False),
        ("spec.nodeName=node-a,metadata.namespace=prod", True),
        ("spec.nodeName=node-a,metadata.namespace!=prod", False),
        ("status.phase=", True),  # an unset field is the empty string
        ("status.phase!=", False),
        ("metadata.name=web-1,", True),  # empty terms are skipped
    ],
)
def test_field_selector_matches(text: str, expected: bool) -> None:
    assert parse_field_selector(text).matches(FIELDS) is expected


def test_field_selector_terms_and_escapes() -> None:
    selector = parse_field_selector(r"metadata.name=a\,b\=c\\d,spec.nodeName!=x")
    assert set(selector.requirements) == {
        FieldRequirement("metadata.name", "=", "a,b=c\\d"),
        FieldRequirement("spec.nodeName", "!=", "x"),
    }
    assert selector.fields == {"metadata.name", "spec.nodeName"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spec.nodeName", "invalid selector: 'spec.nodeName'; can't understand 'spec.nodeName'"),
        ("a=b,c", "can't understand 'c'"),
        (r"metadata.name=a\x", "invalid escape sequence"),
        ("metadata.name=a=b", "unescaped"),
    ],
)
def test_field_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_field_selector(text)
    assert message in str(caught.value)
