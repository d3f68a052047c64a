"""Bad arguments exit 2 with the command's usage; help, version and manifests need no server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from konductor.cli import EXIT_USAGE, main
from konductor.manifests import crds, rbac
from tests.cli.support import konductor


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["semaphore"], "required: COMMAND"),
        (["semaphore", "get"], "required: NAME"),
        (["semaphore", "create", "x"], "--permits"),
        (["semaphore", "create", "x", "--permits", "0"], "at least 1"),
        (["semaphore", "acquire", "x", "--ttl", "0"], "ttl must be positive"),
        (["semaphore", "acquire", "x", "--ttl", "soon"], "invalid duration"),
        (["semaphore", "acquire", "x", "--timeout", "-1"], "invalid duration"),
        (["semaphore", "release", "x"], "one of the arguments --holder --id --all"),
        (["semaphore", "release", "x", "--holder", "a", "--all"], "not allowed with"),
        (["semaphore", "run", "x", "--permits", "1"], "no command to run: put it after --"),
        (["semaphore", "run", "x", "--permits", "1", "--"], "no command to run"),
        (["semaphore", "run", "x", "sleep", "1"], "put the command after --"),
        (["lease", "run", "x", "--ttl", "1", "true"], "put the command after --"),
        (["once", "run", "x"], "no command to run"),
        (["semaphore", "get", "x", "--", "ls"], "takes no command after --"),
        (["semaphore", "get", "x", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["-o", "xml", "status"], "invalid choice: 'xml'"),
        (["barrier", "arrive", "b", "--expected", "two"], "invalid integer"),
        (["barrier", "arrive", "b", "--timeout", "1"], "--timeout needs --wait"),
        (["gate", "wait", "g", "--condition", "Barrier"], "use TYPE/NAME"),
        (["gate", "wait", "g", "--condition", "Pod/x"], "must be one of Barrier, Once, Job"),
        (["semaphore", "get", "Not_A_Name"], "invalid name 'Not_A_Name'"),
        (["-n", "Bad.Namespace", "status"], "invalid namespace"),
        (["--store", "nowhere", "status"], "--store 'nowhere' is not a store konductor knows"),
        (["--store", "local", "--kubeconfig", "/etc/hostname", "status"], "cannot be combined"),
        (["--kubeconfig", "/no/such/file", "status"], "no such file"),
        (["install", "--no-crds", "--no-rbac"], "nothing to install"),
    ],
)
def test_bad_arguments_exit_2_with_usage(
    argv: list[str], complaint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A local store in a temporary directory, for the errors found after parsing
    # (which must come before any real work is done).
    if "--store" not in argv and "--kubeconfig" not in argv and argv[:1] != ["install"]:
        argv = ["--store", f"local:{tmp_path / 'k.db'}", *argv]
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: konductor" in err
    assert complaint in err


def test_install_refuses_a_store_that_needs_no_installation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--store", f"local:{tmp_path / 'k.db'}", "install"]) == EXIT_USAGE
    assert "needs no installation" in capsys.readouterr().err


def test_global_options_go_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"local:{tmp_path / 'k.db'}"
    assert (
        main(["--store", store, "-n", "team-a", "semaphore", "create", "s", "--permits", "2"]) == 0
    )
    capsys.readouterr()
    assert (
        main(["semaphore", "get", "s", "--store", store, "--namespace", "team-a", "-o", "json"])
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert (got["name"], got["namespace"], got["permits"]) == ("s", "team-a", 2)
    # Another namespace of the same file does not see it: exit 1, not found.
    assert main(["semaphore", "get", "s", "--store", store, "-n", "team-b"]) == 1
    assert "not found" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("install", "uninstall", "manifests", "status", "semaphore", "barrier", "lease"):
        assert word in out
    for word in ("gate", "once", "mutex", "rwmutex", "waitgroup", "delete", "COMMAND --help"):
        assert word in out
    assert "exit codes" in out
    assert main(["semaphore", "run", "--help"]) == 0
    assert "NAME -- CMD" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("konductor ")


def test_manifests_print_the_crds_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifests"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == crds()


def test_manifests_rbac_for_a_namespace_and_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifests", "--rbac", "--namespace", "team-a", "--service-account", "app"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == rbac("team-a", "app")
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding"]
    assert main(["manifests", "--crds", "--rbac", "-n", "team-a", "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "List"
    assert listed["items"] == [*crds(), *rbac("team-a")]


def test_python_dash_m_and_the_console_script() -> None:
    proc = konductor("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("konductor ")
    script = Path(sys.executable).with_name("konductor")
    assert script.is_file(), "pip install -e . installs the konductor console script"
    done = subprocess.run([str(script), "manifests", "--rbac"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "kind: RoleBinding" in done.stdout
    bad = subprocess.run([str(script), "lease"], capture_output=True, text=True)
    assert bad.returncode == EXIT_USAGE
    assert bad.stdout == ""
