"""scripts/apt-deb-src.py adds only the deb-src entries apt is missing (checked by apt itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "apt-deb-src.py"
KEY = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBIAN = f"""Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEY}

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEY}
"""


def apt_dir(tmp_path: Path, sources_list: str = "") -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(sources_list)
    (apt / "sources.list.d" / "debian.sources").write_text(DEBIAN)
    return apt


def derive(apt: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(apt)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def source_targets(apt: Path) -> tuple[list[str], str]:
    """The Sources index targets apt configures from ``apt``, and its warnings."""
    done = subprocess.run(
        [
            "apt-get",
            "-o",
            f"Dir::Etc::SourceList={apt / 'sources.list'}",
            "-o",
            f"Dir::Etc::SourceParts={apt / 'sources.list.d'}",
            "indextargets",
            "--format",
            "$(CREATED_BY) $(SITE) $(RELEASE)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    targets = sorted(line for line in done.stdout.splitlines() if line.startswith("Sources "))
    return targets, done.stderr


EVERY_SUITE = [
    "Sources http://deb.debian.org/debian bookworm",
    "Sources http://deb.debian.org/debian bookworm-updates",
    "Sources http://deb.debian.org/debian-security bookworm-security",
]


def test_a_fresh_machine_gets_every_deb_src_entry_once(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path)
    assert derive(apt) == "changed"
    targets, warnings = source_targets(apt)
    assert targets == EVERY_SUITE
    assert "configured multiple times" not in warnings
    assert derive(apt) == "unchanged"  # idempotent


def test_existing_deb822_deb_src_entries_are_not_repeated(tmp_path: Path) -> None:
    both = DEBIAN.replace("Types: deb\n", "Types: deb deb-src\n")
    apt = apt_dir(tmp_path)
    (apt / "sources.list.d" / "debian.sources").write_text(both)
    assert derive(apt) == "unchanged"  # nothing is missing: nothing written
    assert not (apt / "sources.list.d" / "konductor-deb-src.sources").exists()
    targets, warnings = source_targets(apt)
    assert targets == EVERY_SUITE
    assert "configured multiple times" not in warnings


def test_one_line_deb_src_entries_count_and_only_the_missing_suite_is_added(
    tmp_path: Path,
) -> None:
    apt = apt_dir(
        tmp_path,
        sources_list="deb-src http://deb.debian.org/debian bookworm main\n"
        f"deb-src [signed-by={KEY}] http://deb.debian.org/debian-security bookworm-security main\n",
    )
    assert derive(apt) == "changed"
    written = (apt / "sources.list.d" / "konductor-deb-src.sources").read_text()
    assert "Suites: bookworm-updates" in written
    assert "Suites: bookworm\n" not in written
    assert "bookworm-security" not in written
    targets, warnings = source_targets(apt)
    assert targets == EVERY_SUITE
    assert "configured multiple times" not in warnings


def test_a_duplicate_written_by_an_older_version_is_removed(tmp_path: Path) -> None:
    # What the old script left behind on a machine that already had deb-src
    # entries: apt warned about it on every command, forever after.
    both = DEBIAN.replace("Types: deb\n", "Types: deb deb-src\n")
    apt = apt_dir(tmp_path)
    old = DEBIAN.replace("Types: deb\n", "Types: deb-src\n")
    (apt / "sources.list.d" / "konductor-deb-src.sources").write_text(old)
    (apt / "sources.list.d" / "debian.sources").write_text(both)
    assert "configured multiple times" in source_targets(apt)[1]
    assert derive(apt) == "changed"
    targets, warnings = source_targets(apt)
    assert targets == EVERY_SUITE
    assert "configured multiple times" not in warnings
