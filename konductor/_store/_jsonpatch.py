"""JSON Patch (RFC 6902): the subset konductor sends, applied as the API server does.

A guarded patch is a list of operations whose ``test`` operations state what
the writer's decision depends on (say, the holders array it counted permits
on); the store applies the whole list atomically to the object's *current*
state, or not at all when a test fails. Unlike a compare-and-swap on the whole
object's version, a change the decision did not depend on (a waiter appending
its ticket to the queue) does not make the write fail: the API server retries
its own read-modify-write, so contending writers stop conflicting with each
other over changes that do not matter to them.

The local and memory stores apply patches with :func:`apply`; the Kubernetes
store sends them (``application/json-patch+json``). The API server answers 422
both for a patch that does not apply (a failed test: a conflict) and for a
patched object its schema rejects; only the latter names fields in its causes.

Operations: ``test``, ``add``, ``remove``, ``replace`` on paths into the
object document ``{"spec": ..., "status": ...}``. ``test`` compares JSON values
(numbers by value: ``1 == 1.0``, as the API server's implementation does).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from konductor._errors import Conflict, InvalidArgument

JSON = dict[str, Any]
Op = dict[str, Any]


class PatchTestFailed(Exception):
    """A ``test`` operation did not hold: the object changed in a way the writer relied on."""


class PatchError(ValueError):
    """The patch cannot be applied to this document (a bad path or operation)."""


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def pointer(*parts: str | int) -> str:
    """The JSON pointer of ``parts`` (escaped), e.g. ``pointer("status", "queue", 0)``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"{token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not for_add):
        raise PatchError(f"array index {i} out of range (length {len(container)})")
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path member {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"cannot descend into {type(node).__name__} at {token!r}")
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = _tokens(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{path} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, for_add=False)]
    raise PatchError(f"{path} does not exist")


def equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (not ``True == 1``), objects by keys, arrays in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


_UNSAFE = frozenset("<>&")


def canonical(value: Any) -> Any:
    """``value`` with integral floats as integers: how the API server writes them back.

    The API server compares a ``test`` value with the stored one *byte for
    byte* as JSON (its json-patch library compares scalars' raw text), and it
    re-encodes a number it stored as ``15.0`` as ``15``.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def stable(value: Any) -> bool:
    """Whether ``value`` encodes to the same JSON text here and in the API server.

    Plain ASCII strings without ``<``, ``>``, ``&`` (which Go escapes) or
    control characters, integers, booleans, null, and floats that both write
    in plain decimal notation. A ``test`` of anything else could fail on the
    server for a value that is equal: such a decision is written by
    compare-and-swap instead.
    """
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return value == 0 or 1e-4 <= abs(value) < 1e15
    if isinstance(value, str):
        return value.isascii() and value.isprintable() and not (_UNSAFE & set(value))
    if isinstance(value, dict):
        return all(stable(k) and stable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(stable(v) for v in value)
    return False


def _apply_one(doc: Any, op: Op) -> None:
    kind = op.get("op")
    path = op.get("path")
    if not isinstance(path, str):
        raise PatchError(f"operation {op!r} has no path")
    if kind == "test":
        try:
            value = _get(doc, path)
        except PatchError:
            raise PatchTestFailed(f"testing value {path} failed: it does not exist") from None
        if not equal(value, op.get("value")):
            raise PatchTestFailed(f"testing value {path} failed")
        return
    tokens = _tokens(path)
    if not tokens:
        raise PatchError("konductor never patches the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if kind in ("add", "replace"):
        value = copy.deepcopy(op.get("value"))
        if isinstance(parent, dict):
            if kind == "replace" and last not in parent:
                raise PatchError(f"cannot replace {path}: it does not exist")
            parent[last] = value
        elif isinstance(parent, list):
            i = _index(parent, last, for_add=kind == "add")
            if kind == "add":
                parent.insert(i, value)
            else:
                parent[i] = value
        else:
            raise PatchError(f"cannot {kind} {path}")
    elif kind == "remove":
        if isinstance(parent, dict):
            if last not in parent:
                raise PatchError(f"cannot remove {path}: it does not exist")
            del parent[last]
        elif isinstance(parent, list):
            del parent[_index(parent, last, for_add=False)]
        else:
            raise PatchError(f"cannot remove {path}")
    else:
        raise PatchError(f"unsupported JSON Patch operation {kind!r}")


def apply(doc: Mapping[str, Any], ops: Sequence[Op]) -> JSON:
    """``doc`` with ``ops`` applied in order, atomically (``doc`` itself is not changed).

    Raises:
        PatchTestFailed: a ``test`` operation failed; nothing is applied.
        PatchError: an operation is malformed or its path does not fit ``doc``.
    """
    out = copy.deepcopy(dict(doc))
    for op in ops:
        _apply_one(out, op)
    return out


def patched_status(
    what: str, spec: Mapping[str, Any], status: Mapping[str, Any], ops: Sequence[Op]
) -> JSON:
    """The status after ``ops``, for the stores that apply patches themselves.

    Raises:
        Conflict: a ``test`` operation failed, or a path does not fit the
            object as it is now.
        InvalidArgument: the patch is malformed or changes the spec.
    """
    check_status_patch(what, ops)
    doc = {"spec": spec, "status": status}
    try:
        out = apply(doc, ops)
    except (PatchTestFailed, PatchError) as exc:
        # A failed test, or a path that does not fit the object as it is now
        # (the patch was decided on another state): the API server refuses both.
        raise Conflict(
            f"{what} changed since it was read ({exc}); read it again and retry"
        ) from None
    if out.keys() != {"spec", "status"} or not equal(out["spec"], spec):
        raise InvalidArgument(f"cannot patch {what}: a status patch may change only the status")
    new = out["status"]
    if not isinstance(new, dict):
        raise InvalidArgument(f"cannot patch {what}: the status must stay an object")
    return new


def check_status_patch(what: str, ops: Sequence[Op]) -> None:
    """Refuse, before sending, a patch that would write anything but the status.

    The API server's status subresource silently drops changes elsewhere; a
    write konductor believes it made must never be dropped.

    Raises:
        InvalidArgument: an operation is not a dict with a known ``op``, or
            writes outside ``/status/``, or tests outside spec and status.
    """
    for op in ops:
        kind = op.get("op") if isinstance(op, Mapping) else None
        path = op.get("path") if isinstance(op, Mapping) else None
        if kind not in ("test", "add", "remove", "replace") or not isinstance(path, str):
            raise InvalidArgument(f"cannot patch {what}: malformed operation {op!r}")
        writes_status = path.startswith("/status/")
        reads_state = path in ("/spec", "/status") or path.startswith(("/spec/", "/status/"))
        if not (writes_status or (kind == "test" and reads_state)):
            raise InvalidArgument(
                f"cannot patch {what}: {kind} of {path!r} (a status patch writes only "
                "under /status/ and tests only spec and status)"
            )
