"""Validation of object names, done before any API call.

Kubernetes names most objects (custom resources and Leases included) as
DNS-1123 subdomains. Checking locally turns a 422 round trip into an immediate,
readable error that states the rule.
"""

from __future__ import annotations

import re

from konductor._errors import InvalidName

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_LEN = 253
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

RULE = (
    "names must be DNS-1123 subdomains: at most 253 characters of lowercase letters, "
    "digits, '-' and '.', starting and ending with a letter or digit (e.g. 'payments-api')"
)


def validate_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is a valid DNS-1123 subdomain.

    Raises:
        InvalidName: ``name`` is not a string, is empty, is longer than 253
            characters, or contains characters the rule forbids.
    """
    if not isinstance(name, str):
        raise InvalidName(
            f"{what} must be a string, got {type(name).__name__}; {RULE}", argument=what
        )
    if not name:
        raise InvalidName(f"{what} must not be empty; {RULE}", argument=what)
    if len(name) > _MAX_LEN:
        raise InvalidName(
            f"{what} {name[:40]!r}... is {len(name)} characters long; {RULE}", argument=what
        )
    if not _DNS1123_SUBDOMAIN.fullmatch(name):
        hint = (
            f" (try {name.lower()!r})"
            if name.lower() != name and _DNS1123_SUBDOMAIN.fullmatch(name.lower())
            else ""
        )
        raise InvalidName(f"invalid {what} {name!r}{hint}: {RULE}", argument=what)
    return name


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid namespace name (a DNS-1123 label).

    Raises:
        InvalidName: ``namespace`` is not a DNS-1123 label (63 characters, no dots).
    """
    if not isinstance(namespace, str):
        raise InvalidName(
            f"namespace must be a string, got {type(namespace).__name__}; {NAMESPACE_RULE}",
            argument="namespace",
        )
    if not namespace:
        raise InvalidName(f"namespace must not be empty; {NAMESPACE_RULE}", argument="namespace")
    if len(namespace) > 63 or not _DNS1123_LABEL.fullmatch(namespace):
        lower = namespace.lower()
        hint = (
            f" (try {lower!r})"
            if lower != namespace and len(lower) <= 63 and _DNS1123_LABEL.fullmatch(lower)
            else ""
        )
        shown = namespace if len(namespace) <= 70 else namespace[:40] + "..."
        raise InvalidName(
            f"invalid namespace {shown!r}{hint}: {NAMESPACE_RULE}", argument="namespace"
        )
    return namespace


NAMESPACE_RULE = (
    "namespaces must be DNS-1123 labels: at most 63 characters of lowercase letters, "
    "digits and '-', starting and ending with a letter or digit, no dots (e.g. 'jobs')"
)
