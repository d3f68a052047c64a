#!/usr/bin/env python3
"""Write the deb-src entries apt is missing, derived from its own deb entries.

``apt-get source`` needs deb-src entries, which Debian images do not configure.
This derives them from apt's ``deb`` entries (same URIs, suites, components
and Signed-By; only the type changes), but only for the (URI, suite,
component) triples that no existing entry already provides: writing one that
exists makes apt warn "configured multiple times" on every later command.

Usage: apt-deb-src.py [APT_DIR] (default /etc/apt). Writes or updates
APT_DIR/sources.list.d/konductor-deb-src.sources (removes it when nothing is
missing) and prints "changed" or "unchanged". Exit 1 when apt has no deb
entries at all to derive from.
"""

from __future__ import annotations

import sys
from pathlib import Path

OURS = "konductor-deb-src.sources"

Triple = tuple[str, str, str]


def _norm(uri: str) -> str:
    return uri.rstrip("/")


def _stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (comments dropped, continuation lines joined)."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                out.append(current)
            current, key = {}, ""
            continue
        if raw[0] in " \t" and key:
            current[key] += " " + raw.strip()
            continue
        key, _, value = raw.partition(":")
        key = key.strip().lower()
        current[key] = value.strip()
    return out


def _enabled(stanza: dict[str, str]) -> bool:
    return stanza.get("enabled", "yes").lower() not in ("no", "false", "0")


def _triples(stanza: dict[str, str]) -> list[Triple]:
    return [
        (_norm(uri), suite, component)
        for uri in stanza.get("uris", "").split()
        for suite in stanza.get("suites", "").split()
        for component in stanza.get("components", "").split() or [""]
    ]


def _one_line(text: str) -> list[tuple[str, list[Triple]]]:
    """``deb [opts] URI SUITE COMPONENT...`` lines as (type, triples)."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith("["):
            rest = rest.partition("]")[2].strip()
        parts = rest.split()
        if kind not in ("deb", "deb-src") or len(parts) < 2:
            continue
        uri, suite, components = parts[0], parts[1], parts[2:] or [""]
        out.append((kind, [(_norm(uri), suite, c) for c in components]))
    return out


def existing_sources(apt: Path) -> set[Triple]:
    """Every (URI, suite, component) some deb-src entry (other than ours) provides."""
    have: set[Triple] = set()
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file() or f.name == OURS:
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for st in _stanzas(text):
                if _enabled(st) and "deb-src" in st.get("types", "").split():
                    have.update(_triples(st))
        elif f.suffix == ".list" or f.name == "sources.list":
            for kind, triples in _one_line(text):
                if kind == "deb-src":
                    have.update(triples)
    return have


def missing_stanzas(apt: Path) -> list[str] | None:
    """deb822 deb-src stanzas for what is missing (``None``: no deb entries at all)."""
    have = existing_sources(apt)
    out: list[str] = []
    found = False
    for f in sorted((apt / "sources.list.d").glob("*.sources")):
        if f.name == OURS:
            continue
        for st in _stanzas(f.read_text(errors="replace")):
            if not _enabled(st) or "deb" not in st.get("types", "").split():
                continue
            found = True
            for uri in st.get("uris", "").split():
                for suite in st.get("suites", "").split():
                    comps = [
                        c
                        for c in st.get("components", "").split()
                        if (_norm(uri), suite, c) not in have
                    ]
                    if not comps:
                        continue
                    lines = ["Types: deb-src", f"URIs: {uri}", f"Suites: {suite}"]
                    lines.append(f"Components: {' '.join(comps)}")
                    if "signed-by" in st:
                        lines.append(f"Signed-By: {st['signed-by']}")
                    out.append("\n".join(lines))
                    have.update((_norm(uri), suite, c) for c in comps)
    return out if found else None


def main(argv: list[str]) -> int:
    apt = Path(argv[1]) if len(argv) > 1 else Path("/etc/apt")
    stanzas = missing_stanzas(apt)
    if stanzas is None:
        print(
            f"no deb822 deb entries in {apt}/sources.list.d to derive deb-src from", file=sys.stderr
        )
        return 1
    ours = apt / "sources.list.d" / OURS
    before = ours.read_text() if ours.exists() else None
    after = "\n\n".join(stanzas) + "\n" if stanzas else None
    if after != before:
        if after is None:
            ours.unlink()
        else:
            ours.write_text(after)
        print("changed")
    else:
        print("unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
