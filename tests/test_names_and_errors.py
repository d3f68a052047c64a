"""Input validation and error translation that need no server."""

from __future__ import annotations

import pytest

from konductor import (
    AlreadyExists,
    Conflict,
    CRDNotInstalled,
    Expired,
    Forbidden,
    Invalid,
    InvalidName,
    NotFound,
    StoreUnavailable,
    validate_name,
)
from konductor._kube._api import Target, raise_for_status
from konductor._names import validate_namespace


@pytest.mark.parametrize("name", ["a", "payments-api", "a.b-c", "0", "x" * 253])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("", "must not be empty"),
        ("Payments", "'payments'"),
        ("x" * 254, "254 characters"),
        ("a_b", "DNS-1123"),
        ("-a", "DNS-1123"),
        ("a-", "DNS-1123"),
        ("a..b", "DNS-1123"),
        (42, "must be a string"),
    ],
)
def test_invalid_names_say_the_rule(name: object, hint: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    assert hint in str(info.value)
    assert "DNS-1123" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_namespaces_are_labels() -> None:
    assert validate_namespace("team-a") == "team-a"
    with pytest.raises(InvalidName, match="DNS-1123 label"):
        validate_namespace("a.b")
    with pytest.raises(InvalidName):
        validate_namespace("x" * 64)
    # The message states the namespace rule, not the (longer) object-name rule.
    with pytest.raises(InvalidName) as info:
        validate_namespace("BadNS")
    assert "(try 'badns')" in str(info.value)
    assert "namespaces must be DNS-1123 labels" in str(info.value)
    assert "subdomain" not in str(info.value)


T = Target("get", "semaphores.konductor.io", "Semaphore", "ns", "s1")


def status(code: int, reason: str, **details: object) -> dict[str, object]:
    return {"kind": "Status", "code": code, "reason": reason, "message": "m", "details": details}


@pytest.mark.parametrize(
    ("code", "body", "error"),
    [
        (404, status(404, "NotFound", name="s1", kind="semaphores"), NotFound),
        (404, status(404, "NotFound"), CRDNotInstalled),
        (409, status(409, "AlreadyExists", name="s1"), AlreadyExists),
        (409, status(409, "Conflict", name="s1"), Conflict),
        (403, status(403, "Forbidden"), Forbidden),
        (401, status(401, "Unauthorized"), Forbidden),
        (410, status(410, "Expired"), Expired),
        (422, status(422, "Invalid", causes=[{"field": "spec.permits"}]), Invalid),
        (429, status(429, "TooManyRequests"), StoreUnavailable),
        (500, status(500, "InternalError"), StoreUnavailable),
        (503, {}, StoreUnavailable),
    ],
)
def test_status_translation_uses_code_and_reason(
    code: int, body: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        raise_for_status(code, body, T, None)
    assert type(info.value) is error
    assert info.value.status == code  # type: ignore[attr-defined]


def test_forbidden_names_the_namespace_to_grant_the_role_in() -> None:
    with pytest.raises(Forbidden) as info:
        raise_for_status(403, status(403, "Forbidden"), T, None)
    assert "konductor manifests --rbac --namespace ns |" in str(info.value)
    assert "NAMESPACE" not in str(info.value)


def test_invalid_names_each_field() -> None:
    body = status(
        422,
        "Invalid",
        causes=[
            {"field": "spec.permits", "message": "should be >= 1"},
            {"field": "spec.x", "message": "bad"},
        ],
    )
    with pytest.raises(Invalid) as info:
        raise_for_status(422, body, T, None)
    assert info.value.fields == ("spec.permits", "spec.x")
    assert "spec.permits: should be >= 1" in str(info.value)
