"""``konductor barrier arrive|wait|status`` and ``konductor gate open|close|wait|status``."""

from __future__ import annotations

from konductor import BarrierInfo, GateInfo
from konductor._admin import ObjectStatus
from konductor.cli import _options as opt
from konductor.cli._common import EXIT_OK, JSON, Session, UsageError, fields, positive


def register(groups: opt.SubParsers, parent: object) -> None:
    group = opt.group(
        groups,
        "barrier",
        "wait until N parties have arrived",
        "A barrier opens once --expected distinct parties have arrived, and stays open.",
    )
    sub = opt.subcommands(group)
    p = opt.leaf(
        sub,
        "arrive",
        arrive,
        parent,
        "record this party's arrival (and with --wait, wait until the barrier opens)",
        "Records an arrival. Arriving twice with the same --party counts once; without "
        "--party each invocation is a new party (the process identity), so pass a stable "
        "party (e.g. $JOB_COMPLETION_INDEX) if the command may be retried.",
    )
    opt.name(p)
    p.add_argument(
        "--expected",
        type=positive,
        help="create the barrier for N parties if it does not exist (the cluster's wins)",
    )
    p.add_argument("--party", help="who arrives (default: this process's identity)")
    p.add_argument("--wait", action="store_true", help="then wait until the barrier opens")
    opt.timeout(p, "with --wait: how long to wait (default: forever); exit 3 after it")

    p = opt.leaf(sub, "wait", wait, parent, "wait until the barrier opens")
    opt.name(p)
    opt.timeout(p, "how long to wait (default: forever); exit 3 after it")

    p = opt.leaf(sub, "status", barrier_status, parent, "show expected and arrived parties")
    opt.name(p)

    group = opt.group(
        groups,
        "gate",
        "closed until opened by hand or by its conditions",
        "A gate is open when `gate open` set its flag, or when all its conditions "
        "(Barrier/NAME open, Once/NAME done, Job/NAME complete) are met.",
    )
    sub = opt.subcommands(group)
    p = opt.leaf(sub, "open", gate_open, parent, "open a gate (created if missing); waiters pass")
    opt.name(p)
    p = opt.leaf(sub, "close", gate_close, parent, "close a gate (created closed if missing)")
    opt.name(p)
    p = opt.leaf(
        sub,
        "wait",
        gate_wait,
        parent,
        "wait until a gate is open",
        "Waits until the gate's flag is set or all its conditions are met. A missing gate "
        "is created closed, with the --condition options given.",
    )
    opt.name(p)
    p.add_argument(
        "--condition",
        action="append",
        metavar="TYPE/NAME",
        help="when creating the gate: open it once Barrier/NAME is open, Once/NAME is "
        "done or Job/NAME is complete (repeatable)",
    )
    opt.timeout(p, "how long to wait (default: forever); exit 3 after it")
    p = opt.leaf(sub, "status", gate_status, parent, "show a gate and its conditions")
    opt.name(p)


# -- barrier --------------------------------------------------------------------------


def _barrier_data(info: BarrierInfo, namespace: str) -> JSON:
    return {
        "name": info.name,
        "namespace": namespace,
        "expected": info.expected,
        "arrivedCount": info.arrived_count,
        "missing": info.missing,
        "open": info.open,
        "openedAt": info.opened_at,
        "arrived": list(info.arrived),
    }


def _barrier_line(info: BarrierInfo) -> str:
    state = "open" if info.open else f"{info.missing} missing"
    return f"barrier {info.name!r}: {info.arrived_count}/{info.expected} arrived ({state})"


def _render_barrier(name: str) -> opt.Render:
    def render(o: ObjectStatus | None) -> str:
        if o is None:
            return f"waiting for barrier {name!r}: nobody has arrived yet"
        return f"waiting for barrier {name!r}: {o.summary}"

    return render


async def _wait_barrier(s: Session, name: str, timeout: float | None) -> BarrierInfo:
    return await s.watching(
        "barrier", name, _render_barrier(name), s.client().wait_barrier(name, timeout=timeout)
    )


async def arrive(s: Session) -> int:
    a = s.args
    if a.timeout is not None and not a.wait:
        raise UsageError("--timeout needs --wait (arrive alone does not wait)")
    info = await s.client().arrive_barrier(a.name, a.expected, party=a.party)
    party = a.party or s.client().identity
    if a.wait and not info.open:
        s.say(f"arrived at barrier {a.name!r} as {party}: {info.arrived_count}/{info.expected}")
        info = await _wait_barrier(s, a.name, a.timeout)
    s.emit(
        {**_barrier_data(info, s.namespace), "party": party},
        lambda: f"arrived as {party}; {_barrier_line(info)}",
    )
    return EXIT_OK


async def wait(s: Session) -> int:
    info = await _wait_barrier(s, s.args.name, s.args.timeout)
    s.emit(_barrier_data(info, s.namespace), lambda: _barrier_line(info))
    return EXIT_OK


async def barrier_status(s: Session) -> int:
    info = await s.client().barrier_status(s.args.name)
    s.emit(
        _barrier_data(info, s.namespace),
        lambda: fields(
            [
                ("Name", info.name),
                ("Namespace", s.namespace),
                ("Expected", info.expected),
                ("Arrived", f"{info.arrived_count} ({', '.join(info.arrived) or 'nobody'})"),
                ("Open", f"yes, since {info.opened_at}" if info.open else "no"),
            ]
        ),
    )
    return EXIT_OK


# -- gate -----------------------------------------------------------------------------


def _gate_data(info: GateInfo, namespace: str) -> JSON:
    return {
        "name": info.name,
        "namespace": namespace,
        "open": info.open,
        "flag": info.flag,
        "conditions": [
            {"type": c.condition.type, "name": c.condition.name, "met": c.met, "detail": c.detail}
            for c in info.conditions
        ],
    }


def _gate_text(info: GateInfo) -> str:
    lines = [f"gate {info.name!r} is {'open' if info.open else 'closed'}"]
    if info.flag:
        lines[0] += " (opened by hand)"
    for c in info.conditions:
        lines.append(f"  [{'x' if c.met else ' '}] {c.detail}")
    return "\n".join(lines)


def _conditions(values: list[str] | None) -> list[JSON] | None:
    if not values:
        return None
    out = []
    for value in values:
        type_, sep, name = value.partition("/")
        if not sep or not type_ or not name:
            raise UsageError(
                f"--condition {value!r}: use TYPE/NAME, e.g. Barrier/all-ready, Once/migrate, "
                "Job/seed-data"
            )
        out.append({"type": type_, "name": name})
    return out


def _render_gate(name: str) -> opt.Render:
    def render(o: ObjectStatus | None) -> str:
        return f"waiting for gate {name!r}: {o.summary if o is not None else 'closed'}"

    return render


async def gate_open(s: Session) -> int:
    await s.client().open_gate(s.args.name)
    info = await s.client().gate_status(s.args.name)
    s.emit(_gate_data(info, s.namespace), lambda: _gate_text(info))
    return EXIT_OK


async def gate_close(s: Session) -> int:
    await s.client().close_gate(s.args.name)
    info = await s.client().gate_status(s.args.name)
    s.emit(_gate_data(info, s.namespace), lambda: _gate_text(info))
    return EXIT_OK


async def gate_wait(s: Session) -> int:
    a = s.args
    conds = _conditions(a.condition)
    info = await s.watching(
        "gate",
        a.name,
        _render_gate(a.name),
        s.client().wait_gate(a.name, conditions=conds, timeout=a.timeout),
    )
    s.emit(_gate_data(info, s.namespace), lambda: _gate_text(info))
    return EXIT_OK


async def gate_status(s: Session) -> int:
    info = await s.client().gate_status(s.args.name)
    s.emit(_gate_data(info, s.namespace), lambda: _gate_text(info))
    return EXIT_OK
