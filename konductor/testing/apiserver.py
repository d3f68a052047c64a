"""A real Kubernetes API server for konductor's tests, and for contributors.

Two environments share one interface:

* :class:`LocalApiServer` runs a real ``kube-apiserver`` (v1.20.2, built once from
  Debian's source package by ``scripts/build-kube-apiserver.sh`` and cached) on top of
  a private ``etcd``, both bound to loopback on free ports, with token authentication
  and RBAC. Three users exist: ``admin`` (group ``system:masters``), ``alice`` (group
  ``team-a``, no bindings, so every request is 403 Forbidden) and ``bob`` (group
  ``team-b``, for RBAC-manifest tests).
* :class:`ExternalCluster` uses another cluster (kind, minikube, a real one) given by
  the kubeconfig named in ``KONDUCTOR_TEST_KUBECONFIG``. Unprivileged identities there
  are ServiceAccounts without bindings, with tokens from the TokenRequest API.

:func:`test_environment` picks one of the two from the environment.

Command line, for contributors::

    python -m konductor.testing.apiserver up

starts a local server, prints ``export KUBECONFIG=...`` lines and the tokens, and
runs until Ctrl-C or SIGTERM.

Only the standard library and PyYAML are used, so this module works before (and
without) any Kubernetes client being importable.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, Literal, Self

import yaml

__all__ = [
    "BUILD_SCRIPT",
    "ENV_BINARY",
    "ENV_KUBECONFIG",
    "ApiResponse",
    "ExternalCluster",
    "KubeEnvError",
    "LocalApiServer",
    "find_kube_apiserver",
    "test_environment",
]

ENV_BINARY: Final = "KONDUCTOR_KUBE_APISERVER"
"""Environment variable: path of a kube-apiserver binary to use."""

ENV_KUBECONFIG: Final = "KONDUCTOR_TEST_KUBECONFIG"
"""Environment variable: kubeconfig of an existing cluster to test against."""

KUBE_APISERVER_VERSION: Final = "v1.20.2"

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BUILD_SCRIPT: Final = REPO_ROOT / "scripts" / "build-kube-apiserver.sh"

NAMESPACE: Final = "default"
READY_TIMEOUT: Final = 60.0
STOP_GRACE: Final = 10.0
_PORT_ATTEMPTS: Final = 3
_LOG_TAIL_LINES: Final = 40
_COMPACTION_MARKER_KEY: Final = "/konductor-testing/compaction-marker"


Component = Literal["etcd", "kube-apiserver"]


class KubeEnvError(RuntimeError):
    """The test environment could not be found, started or used."""


@dataclass(frozen=True)
class ApiResponse:
    """The raw result of :meth:`LocalApiServer.request` / :meth:`ExternalCluster.request`."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body decoded as one JSON document (``None`` for an empty body)."""
        return json.loads(self.body) if self.body.strip() else None

    def events(self) -> list[dict[str, Any]]:
        """The body of a watch response: one JSON watch event per line."""
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    @property
    def reason(self) -> str | None:
        """``reason`` of a ``Status`` body (e.g. ``Forbidden``, ``AlreadyExists``), if any."""
        with contextlib.suppress(ValueError):
            doc = self.json()
            if isinstance(doc, dict):
                reason = doc.get("reason")
                return reason if isinstance(reason, str) else None
        return None


# --------------------------------------------------------------------------- helpers


def _cache_dir() -> Path:
    # Same rule as scripts/build-kube-apiserver.sh.
    explicit = os.environ.get("KONDUCTOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "konductor"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _missing_tools() -> list[str]:
    return [tool for tool in ("etcd", "etcdctl", "openssl") if shutil.which(tool) is None]


def _how_to_get_a_binary() -> str:
    return (
        f"Get a kube-apiserver {KUBE_APISERVER_VERSION} binary in one of these ways: "
        f"pass binary=PATH; set {ENV_BINARY}=PATH; or run scripts/build-kube-apiserver.sh "
        "from a konductor source checkout (it builds one from Debian's kubernetes source "
        f"package and caches it as {_cache_dir() / ('kube-apiserver-' + KUBE_APISERVER_VERSION)}"
        "). Alternatively test against an existing cluster by setting "
        f"{ENV_KUBECONFIG}=KUBECONFIG."
    )


def _run_build_script() -> Path:
    if not BUILD_SCRIPT.is_file():
        raise KubeEnvError(
            f"no kube-apiserver binary found and the build script {BUILD_SCRIPT} does not "
            f"exist (konductor is not running from a source checkout). {_how_to_get_a_binary()}"
        )
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # One build at a time, also across processes (e.g. parallel test workers).
    with (cache / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        print(
            f"konductor: running {BUILD_SCRIPT} (a first build takes several minutes)",
            file=sys.stderr,
            flush=True,
        )
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise KubeEnvError(
            f"{BUILD_SCRIPT} failed with exit code {proc.returncode} (its log is on stderr). "
            f"{_how_to_get_a_binary()}"
        )
    binary = Path(lines[-1])
    if not _is_executable(binary):
        raise KubeEnvError(f"{BUILD_SCRIPT} printed {binary}, which is not an executable file")
    return binary


def find_kube_apiserver(binary: str | os.PathLike[str] | None = None) -> Path:
    """Locate (or build) the kube-apiserver binary.

    Order: the explicit ``binary``; ``$KONDUCTOR_KUBE_APISERVER``; the cached build;
    otherwise run ``scripts/build-kube-apiserver.sh`` (which also installs etcd,
    etcdctl and openssl from Debian when they are missing).
    """
    for source, value in (("binary=", binary), (ENV_BINARY, os.environ.get(ENV_BINARY))):
        if value:
            path = Path(value).expanduser()
            if not _is_executable(path):
                raise KubeEnvError(f"{source} {path} is not an executable file")
            return path
    cached = _cache_dir() / f"kube-apiserver-{KUBE_APISERVER_VERSION}"
    if _is_executable(cached) and not _missing_tools():
        return cached
    return _run_build_script()


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets are held open until all are chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen[bytes] | None, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process (by its own pid), SIGKILL it after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _kubeconfig_doc(
    cluster: dict[str, Any], user_name: str, user: dict[str, Any], namespace: str = NAMESPACE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "konductor-test", "cluster": cluster}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [
            {
                "name": f"konductor-test-{user_name}",
                "context": {"cluster": "konductor-test", "user": user_name, "namespace": namespace},
            }
        ],
        "current-context": f"konductor-test-{user_name}",
        "preferences": {},
    }


def _fixed(value: str) -> Callable[[], str | None]:
    return lambda: value


def _write_private(path: Path, text: str | bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def _write_kubeconfig(path: Path, doc: dict[str, Any]) -> Path:
    _write_private(path, yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class _Identity:
    """How to authenticate one user: a TLS context (may carry a client cert) and a token."""

    context: ssl.SSLContext
    token: Callable[[], str | None]
    refresh: Callable[[], None] | None = None


class _KubeEnv:
    """What both environments share: users, kubeconfigs and a tiny stdlib HTTP client."""

    can_compact: bool = False

    def __init__(self) -> None:
        self._server: str | None = None
        self._kubeconfigs: dict[str, Path] = {}
        self._tokens: dict[str, str] = {}
        self._identities: dict[str, _Identity] = {}
        self._subjects: dict[str, dict[str, str]] = {}
        self._use_env_proxy = False
        self._atexit_registered = False

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def _unregister_atexit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    # -- properties --------------------------------------------------------------

    def _require_started(self) -> str:
        if self._server is None:
            raise KubeEnvError(f"{type(self).__name__} is not started; call start() first")
        return self._server

    @property
    def server(self) -> str:
        """Base URL of the API server, e.g. ``https://127.0.0.1:40123``."""
        return self._require_started()

    def kubeconfig(self, user: str) -> Path:
        """Kubeconfig file of ``user`` (``admin``, ``alice`` or ``bob``)."""
        self._require_started()
        try:
            return self._kubeconfigs[user]
        except KeyError:
            raise KubeEnvError(
                f"unknown user {user!r}; known: {sorted(self._kubeconfigs)}"
            ) from None

    @property
    def admin_kubeconfig(self) -> Path:
        """Kubeconfig with full privileges (cluster-admin)."""
        return self.kubeconfig("admin")

    @property
    def alice_kubeconfig(self) -> Path:
        """Kubeconfig of an unprivileged identity: no RBAC bindings, every request is 403."""
        return self.kubeconfig("alice")

    @property
    def unprivileged_kubeconfig(self) -> Path:
        """Alias of :attr:`alice_kubeconfig`."""
        return self.alice_kubeconfig

    @property
    def bob_kubeconfig(self) -> Path:
        """Kubeconfig of a second identity without bindings, for RBAC-manifest tests."""
        return self.kubeconfig("bob")

    @property
    def tokens(self) -> dict[str, str]:
        """Bearer tokens by user name (a copy). An external admin may have none."""
        self._require_started()
        return dict(self._tokens)

    def subject(self, user: str) -> dict[str, str]:
        """The RBAC ``subjects`` entry that grants a RoleBinding to ``user``.

        Local: ``{"kind": "User", "name": "bob", ...}``. External: the ServiceAccount.
        Use it so RBAC tests bind the right identity in both environments.
        """
        self._require_started()
        try:
            return dict(self._subjects[user])
        except KeyError:
            raise KubeEnvError(
                f"no RBAC subject for {user!r}; known: {sorted(self._subjects)}"
            ) from None

    @property
    def alice_subject(self) -> dict[str, str]:
        return self.subject("alice")

    @property
    def bob_subject(self) -> dict[str, str]:
        return self.subject("bob")

    # -- HTTP --------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        user: str = "admin",
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> ApiResponse:
        """One HTTP request to the API server as ``user``; never raises for HTTP errors.

        ``body`` is sent as JSON unless it is ``bytes``. A watch request returns when
        the server ends the stream, so pass ``timeoutSeconds`` in the query string.
        """
        server = self._require_started()
        identity = self._identities.get(user)
        if identity is None:
            raise KubeEnvError(f"unknown user {user!r}; known: {sorted(self._identities)}")
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPSHandler(context=identity.context)
        ]
        if not self._use_env_proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        opener = urllib.request.build_opener(*handlers)

        def once() -> ApiResponse:
            req = urllib.request.Request(server + path, data=data, method=method.upper())
            req.add_header("Accept", "application/json")
            if data is not None:
                req.add_header("Content-Type", content_type)
            token = identity.token()
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with opener.open(req, timeout=timeout) as resp:
                    return ApiResponse(resp.status, resp.read())
            except urllib.error.HTTPError as err:
                return ApiResponse(err.code, err.read())

        result = once()
        if result.status == 401 and identity.refresh is not None:
            identity.refresh()
            result = once()
        return result

    def create_namespace(self, name: str) -> None:
        """Create namespace ``name`` as admin; an existing one (409) is fine."""
        resp = self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        if resp.status not in (200, 201, 202, 409):
            raise KubeEnvError(
                f"creating namespace {name!r} failed: HTTP {resp.status}: {resp.body[:500]!r}"
            )

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (only where :attr:`can_compact`)."""
        raise KubeEnvError(f"{type(self).__name__} cannot compact etcd (can_compact is False)")


# --------------------------------------------------------------------------- local


class LocalApiServer(_KubeEnv):
    """A real kube-apiserver + etcd on loopback, private to this process.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Every start picks
    free ports and a fresh temporary directory (keys, tokens, etcd data, logs and
    kubeconfigs), so runs never collide with each other or with a developer's own
    cluster.

    ``watch_cache=False`` (the default) starts the apiserver with ``--watch-cache=false``
    so that :meth:`compact_etcd` reliably turns older resourceVersions into
    ``410 Gone``/``Expired`` for watches; see :meth:`compact_etcd`.
    """

    can_compact = True

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        watch_cache: bool = False,
        ready_timeout: float = READY_TIMEOUT,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self._binary_arg = binary
        self.watch_cache = watch_cache
        self.ready_timeout = ready_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.binary: Path | None = None
        self.workdir: Path | None = None
        self.startup_seconds: float | None = None
        """Seconds from launching etcd to the apiserver being ready (last start)."""
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._etcd_endpoint: str | None = None
        self._etcdctl: str | None = None
        self._commands: dict[Component, list[str]] = {}

    # -- properties --------------------------------------------------------------

    @property
    def etcd_endpoint(self) -> str:
        """Client URL of the private etcd, e.g. ``http://127.0.0.1:40125``."""
        self._require_started()
        assert self._etcd_endpoint is not None
        return self._etcd_endpoint

    @property
    def running(self) -> bool:
        """Both processes are alive."""
        return all(p is not None and p.poll() is None for p in (self._etcd, self._apiserver))

    @property
    def apiserver_log(self) -> Path:
        return self._require_workdir() / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self._require_workdir() / "etcd.log"

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of ``etcd`` and ``kube-apiserver``."""
        return {
            name: proc.pid
            for name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver))
            if proc is not None
        }

    def _require_workdir(self) -> Path:
        if self.workdir is None:
            raise KubeEnvError("LocalApiServer is not started; call start() first")
        return self.workdir

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self.binary = find_kube_apiserver(self._binary_arg)
        missing = _missing_tools()
        if missing:
            raise KubeEnvError(
                f"missing tools: {', '.join(missing)}; install them (Debian: "
                "apt-get install etcd-server etcd-client openssl) or run "
                "scripts/build-kube-apiserver.sh, which installs them"
            )
        self._etcdctl = shutil.which("etcdctl")
        self._register_atexit()
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    self._start_once()
                    return self
                except _PortTaken:
                    # Another process took a port between probing and binding; retry.
                    self._teardown()
                    if attempt == _PORT_ATTEMPTS:
                        raise KubeEnvError(
                            f"could not bind free loopback ports in {_PORT_ATTEMPTS} attempts"
                        ) from None
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        assert self.binary is not None
        workdir = Path(tempfile.mkdtemp(prefix="konductor-kube-"))
        self.workdir = workdir
        etcd_port, peer_port, secure_port = _free_ports(3)
        self._etcd_endpoint = f"http://127.0.0.1:{etcd_port}"
        server = f"https://127.0.0.1:{secure_port}"

        # Service-account signing keys (TokenRequest needs them).
        for cmd in (
            ["openssl", "genrsa", "-out", "sa.key", "2048"],
            ["openssl", "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
        ):
            proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise KubeEnvError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")

        # Static token file: token,user,uid,"group1,group2".
        self._tokens = {name: secrets.token_hex(24) for name in ("admin", "alice", "bob")}
        groups = {"admin": "system:masters", "alice": "team-a", "bob": "team-b"}
        _write_private(
            workdir / "tokens.csv",
            "".join(
                f'{token},{name},uid-{name},"{groups[name]}"\n'
                for name, token in self._tokens.items()
            ),
        )

        started = time.monotonic()
        etcd_name = "konductor-test"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd_cmd = [
            "etcd",
            "--name", etcd_name,
            "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", self._etcd_endpoint,
            "--advertise-client-urls", self._etcd_endpoint,
            "--listen-peer-urls", peer_url,
            # Keep the member's own peer URL consistent with the port we chose (the
            # defaults name localhost:2380, which may belong to someone else).
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{etcd_name}={peer_url}",
            "--initial-cluster-state", "new",
        ]  # fmt: skip
        self._commands = {"etcd": etcd_cmd}
        self._etcd = self._launch("etcd")
        deadline = started + self.ready_timeout
        self._wait_etcd(deadline)

        apiserver_cmd = [
            str(self.binary),
            f"--etcd-servers={self._etcd_endpoint}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={secure_port}",
            "--insecure-port=0",
            f"--cert-dir={workdir / 'certs'}",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={workdir / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # Why no watch cache: with it, the apiserver answers watches from its own
            # in-memory event window (at least 100 events per resource, growing up to
            # 100k to keep ~75 s of history), independently of etcd. A resourceVersion
            # still in that window keeps working after an etcd compaction, so 410 Gone
            # cannot be forced. With --watch-cache=false every watch is an etcd watch,
            # and etcd refuses a start revision below the compacted one: the client
            # gets an ERROR event with a Status of code 410, reason "Expired", and the
            # stream ends. Measured on v1.20.2 for configmaps, leases and a CRD:
            # --watch-cache=false -> ERROR 410 at once; the default watch cache, and
            # also --default-watch-cache-size=0, -> the old events are replayed.
            # Otherwise reads and watches behave the same; watch_cache=True restores
            # the production default (then only the apiserver's own window expiry,
            # "too old resource version", yields 410).
            f"--watch-cache={'true' if self.watch_cache else 'false'}",
            *self.extra_apiserver_args,
        ]
        self._commands["kube-apiserver"] = apiserver_cmd
        self._apiserver = self._launch("kube-apiserver")

        self._server = server
        ctx = _insecure_context()
        self._identities = {
            name: _Identity(ctx, _fixed(token)) for name, token in self._tokens.items()
        }
        self._subjects = {
            name: {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}
            for name in self._tokens
        }
        self._wait_apiserver(deadline)
        self.startup_seconds = time.monotonic() - started

        cluster = {"server": server, "insecure-skip-tls-verify": True}
        self._kubeconfigs = {
            name: _write_kubeconfig(
                workdir / f"{name}.kubeconfig", _kubeconfig_doc(cluster, name, {"token": token})
            )
            for name, token in self._tokens.items()
        }

    def _launch(self, component: Component) -> subprocess.Popen[bytes]:
        workdir = self._require_workdir()
        with (workdir / f"{component}.log").open("ab") as log:
            return subprocess.Popen(
                self._commands[component],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    # -- control-plane faults ----------------------------------------------------

    def kill(self, component: Component) -> None:
        """SIGKILL ``etcd`` or ``kube-apiserver`` (a crash: nothing is flushed or closed).

        The data directory, ports and credentials stay; :meth:`revive` starts the
        same process again, as a restarted control plane would.
        """
        proc = self._etcd if component == "etcd" else self._apiserver
        if proc is None:
            raise KubeEnvError(f"{component} is not running; call start() first")
        proc.kill()
        proc.wait(10)

    def revive(self, component: Component) -> None:
        """Start a killed ``etcd`` or ``kube-apiserver`` again with the same flags and data.

        Returns once it is healthy (etcd) or ready (kube-apiserver).

        Raises:
            KubeEnvError: it did not come back within ``ready_timeout``.
        """
        deadline = time.monotonic() + self.ready_timeout
        if component == "etcd":
            if self._etcd is not None and self._etcd.poll() is None:
                return
            self._etcd = self._launch("etcd")
            self._wait_etcd(deadline)
        else:
            if self._apiserver is not None and self._apiserver.poll() is None:
                return
            self._apiserver = self._launch("kube-apiserver")
            self._wait_apiserver(deadline)

    def _failure(self, what: str) -> KubeEnvError:
        workdir = self._require_workdir()
        apiserver_log, etcd_log = workdir / "kube-apiserver.log", workdir / "etcd.log"
        message = (
            f"{what}\n--- tail of {apiserver_log} ---\n{_tail(apiserver_log)}"
            f"\n--- tail of {etcd_log} ---\n{_tail(etcd_log)}"
        )
        if "address already in use" in message:
            return _PortTaken(message)
        return KubeEnvError(message)

    def _wait_etcd(self, deadline: float) -> None:
        assert self._etcd is not None
        assert self._etcd_endpoint is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if self._etcd.poll() is not None:
                raise self._failure(f"etcd exited with code {self._etcd.returncode}")
            with (
                contextlib.suppress(OSError, ValueError),
                opener.open(self._etcd_endpoint + "/health", timeout=2) as resp,
            ):
                if json.loads(resp.read()).get("health") == "true":
                    return
            if time.monotonic() > deadline:
                raise self._failure(f"etcd not healthy after {self.ready_timeout:.0f} s")
            time.sleep(0.1)

    def _wait_apiserver(self, deadline: float) -> None:
        assert self._apiserver is not None
        # /readyz covers etcd, RBAC bootstrap roles and the other post-start hooks.
        # The "default" namespace is created by a controller right after; the
        # kubeconfigs point at it, so wait for it too.
        last = "no response"
        for path in ("/readyz", f"/api/v1/namespaces/{NAMESPACE}"):
            while True:
                if self._apiserver.poll() is not None:
                    raise self._failure(
                        f"kube-apiserver exited with code {self._apiserver.returncode}"
                    )
                try:
                    resp = self.request("GET", path, timeout=5)
                    if resp.status == 200:
                        break
                    last = f"HTTP {resp.status}: {resp.body[-300:]!r}"
                except (OSError, ssl.SSLError) as exc:
                    last = repr(exc)
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"kube-apiserver at {self._server} not ready after "
                        f"{self.ready_timeout:.0f} s (GET {path}: {last})"
                    )
                time.sleep(0.2)

    def _teardown(self) -> None:
        # The apiserver first, so it does not log etcd connection errors while stopping.
        _stop_process(self._apiserver)
        _stop_process(self._etcd)
        self._apiserver = self._etcd = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
        self._server = None
        self._etcd_endpoint = None
        self._kubeconfigs = {}
        self._identities = {}
        self._tokens = {}
        self._subjects = {}

    def stop(self) -> None:
        """Stop kube-apiserver and etcd (SIGTERM, SIGKILL after 10 s) and delete the temp dir.

        Idempotent; also registered with :mod:`atexit` while running.
        """
        self._teardown()
        self._unregister_atexit()

    # -- etcd --------------------------------------------------------------------

    def _etcdctl_run(self, *args: str) -> str:
        assert self._etcdctl is not None
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.run(
            [self._etcdctl, f"--endpoints={self.etcd_endpoint}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise KubeEnvError(
                f"etcdctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc.stdout

    def etcd_revision(self) -> int:
        """The current etcd revision (the newest resourceVersion of any object)."""
        status = json.loads(self._etcdctl_run("endpoint", "status", "-w", "json"))
        return int(status[0]["Status"]["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision and return that revision.

        Afterwards a watch from any resourceVersion issued before this call, except
        the newest one, gets an ``ERROR`` event carrying a ``Status`` with code 410,
        reason ``Expired``, and the stream ends (this needs the default
        ``watch_cache=False``). The newest resourceVersion stays valid: nothing after
        it was lost. Lists with ``resourceVersionMatch=Exact`` of an older version
        get HTTP 410 as well.

        First a marker key outside the apiserver's ``/registry`` prefix is written,
        then etcd is compacted to the revision read with ``etcdctl endpoint status``.
        Without the marker, a watch from the resourceVersion just before the newest
        one would start exactly at the compaction revision, which etcd accepts but
        without the previous value of that event: the apiserver then sends a 500
        ``InternalError`` ("etcd event received with PrevKv=nil") instead of 410.

        The apiserver also compacts etcd by itself every 5 minutes
        (``--etcd-compaction-interval``), as in production.
        """
        self._etcdctl_run("put", _COMPACTION_MARKER_KEY, str(time.time()))
        revision = self.etcd_revision()
        try:
            self._etcdctl_run("compact", str(revision))
        except KubeEnvError as exc:
            # Compacted to this revision already (a concurrent compaction).
            if "required revision has been compacted" not in str(exc):
                raise
        return revision


class _PortTaken(KubeEnvError):
    """A chosen port was taken before etcd/kube-apiserver could bind it."""


# --------------------------------------------------------------------------- external


class ExternalCluster(_KubeEnv):
    """An existing cluster named by a kubeconfig (kind, minikube, a real cluster).

    ``admin_kubeconfig`` is that kubeconfig (its current context). ``start()`` creates
    ServiceAccounts ``konductor-test-unprivileged`` ("alice") and ``konductor-test-bob``
    ("bob") in namespace ``default``, without any bindings, gets tokens for them from
    the TokenRequest API and writes kubeconfigs with those tokens and the same cluster
    entry. ``stop()`` deletes the ServiceAccounts (which invalidates the tokens).
    etcd is out of reach: :attr:`can_compact` is False.
    """

    can_compact = False
    SERVICE_ACCOUNTS: Final = {"alice": "konductor-test-unprivileged", "bob": "konductor-test-bob"}
    TOKEN_SECONDS: Final = 24 * 3600

    def __init__(self, kubeconfig: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        value = kubeconfig if kubeconfig is not None else os.environ.get(ENV_KUBECONFIG)
        if not value:
            raise KubeEnvError(f"no kubeconfig given and {ENV_KUBECONFIG} is not set")
        self.source_kubeconfig = Path(value).expanduser().resolve()
        self._use_env_proxy = True  # like kubectl, honour HTTPS_PROXY for a remote cluster
        self._tmp: Path | None = None

    @property
    def etcd_endpoint(self) -> str:
        raise KubeEnvError("the etcd of an external cluster is not reachable")

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._register_atexit()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        try:
            config = yaml.safe_load(self.source_kubeconfig.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KubeEnvError(f"cannot read kubeconfig {self.source_kubeconfig}: {exc}") from exc
        base = self.source_kubeconfig.parent
        context_name = config.get("current-context")
        context = _named(config, "contexts", context_name)["context"]
        cluster = dict(_named(config, "clusters", context["cluster"])["cluster"])
        user = dict(_named(config, "users", context["user"])["user"] or {})
        # The copy of the cluster entry is written elsewhere: make file paths absolute.
        if "certificate-authority" in cluster:
            cluster["certificate-authority"] = str(base / cluster["certificate-authority"])
        self._tmp = Path(tempfile.mkdtemp(prefix="konductor-ext-"))

        server = str(cluster["server"]).rstrip("/")
        self._server = server
        self._identities = {"admin": self._admin_identity(cluster, user, base)}
        if "token" in user:
            self._tokens["admin"] = str(user["token"])
        self._kubeconfigs = {"admin": self.source_kubeconfig}

        version = self.request("GET", "/version", timeout=15)
        if version.status != 200:
            raise KubeEnvError(
                f"GET {server}/version as the kubeconfig user failed: HTTP {version.status} "
                f"{version.body[:300]!r}"
            )

        token_ctx = self._cluster_context(cluster, base)
        for name, sa in self.SERVICE_ACCOUNTS.items():
            token = self._service_account_token(sa)
            self._tokens[name] = token
            self._identities[name] = _Identity(token_ctx, _fixed(token))
            self._subjects[name] = {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}
            self._kubeconfigs[name] = _write_kubeconfig(
                self._tmp / f"{name}.kubeconfig", _kubeconfig_doc(cluster, sa, {"token": token})
            )

    def _service_account_token(self, sa: str) -> str:
        prefix = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts"
        created = self.request(
            "POST",
            prefix,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}},
        )
        if created.status not in (200, 201, 202, 409):
            raise KubeEnvError(
                f"creating ServiceAccount {sa}: HTTP {created.status} {created.body[:300]!r}"
            )
        resp = self.request(
            "POST",
            f"{prefix}/{sa}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": self.TOKEN_SECONDS},
            },
        )
        if resp.status not in (200, 201):
            raise KubeEnvError(
                f"TokenRequest for ServiceAccount {sa}: HTTP {resp.status} {resp.body[:300]!r}"
            )
        return str(resp.json()["status"]["token"])

    def _cluster_context(self, cluster: dict[str, Any], base: Path) -> ssl.SSLContext:
        if cluster.get("insecure-skip-tls-verify"):
            return _insecure_context()
        ctx = ssl.create_default_context()
        if "certificate-authority-data" in cluster:
            ctx.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif "certificate-authority" in cluster:
            ctx.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
        if cluster.get("tls-server-name"):
            # urllib cannot send another server name than the URL's host: skip the
            # hostname check (the certificate chain is still verified against the CA).
            ctx.check_hostname = False
        return ctx

    def _admin_identity(
        self, cluster: dict[str, Any], user: dict[str, Any], base: Path
    ) -> _Identity:
        ctx = self._cluster_context(cluster, base)
        assert self._tmp is not None
        tmp = self._tmp

        def load_client_cert(cert: bytes, key: bytes) -> None:
            _write_private(tmp / "admin.crt", cert)
            _write_private(tmp / "admin.key", key)
            ctx.load_cert_chain(str(tmp / "admin.crt"), str(tmp / "admin.key"))

        if "client-certificate-data" in user and "client-key-data" in user:
            load_client_cert(
                base64.b64decode(user["client-certificate-data"]),
                base64.b64decode(user["client-key-data"]),
            )
        elif "client-certificate" in user and "client-key" in user:
            ctx.load_cert_chain(
                str(base / user["client-certificate"]), str(base / user["client-key"])
            )

        if "token" in user:
            token = str(user["token"])
            return _Identity(ctx, _fixed(token))
        if "tokenFile" in user:
            token_file = base / user["tokenFile"]
            return _Identity(ctx, lambda: token_file.read_text().strip())
        if "exec" in user:
            spec = user["exec"]
            holder: dict[str, str | None] = {"token": None}

            def refresh() -> None:
                cred = _run_exec_plugin(spec, base)
                holder["token"] = cred.get("token")
                if cred.get("clientCertificateData") and cred.get("clientKeyData"):
                    load_client_cert(
                        str(cred["clientCertificateData"]).encode(),
                        str(cred["clientKeyData"]).encode(),
                    )

            refresh()
            return _Identity(ctx, lambda: holder["token"], refresh)
        if "auth-provider" in user:
            raise KubeEnvError(
                "kubeconfig users with 'auth-provider' are not supported by the test "
                "environment; use a token, client certificate or exec plugin"
            )
        return _Identity(ctx, lambda: None)

    def stop(self) -> None:
        """Delete the test ServiceAccounts and the temporary kubeconfigs. Idempotent."""
        if self._server is not None and self._identities.get("admin") is not None:
            for sa in self.SERVICE_ACCOUNTS.values():
                with contextlib.suppress(OSError, ssl.SSLError):
                    self.request(
                        "DELETE",
                        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{sa}",
                        timeout=10,
                    )
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
        self._server = None
        self._kubeconfigs = {}
        self._identities = {}
        self._tokens = {}
        self._unregister_atexit()


def _named(config: dict[str, Any], section: str, name: Any) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            return dict(entry)
    raise KubeEnvError(f"kubeconfig has no {section[:-1]} named {name!r}")


def _run_exec_plugin(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Run a client-go credential plugin and return its ExecCredential status."""
    command = str(spec["command"])
    if os.sep in command and not os.path.isabs(command):
        command = str(base / command)
    env = dict(os.environ)
    for item in spec.get("env") or []:
        env[str(item["name"])] = str(item["value"])
    api_version = spec.get("apiVersion", "client.authentication.k8s.io/v1beta1")
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    proc = subprocess.run(
        [command, *[str(a) for a in spec.get("args") or []]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise KubeEnvError(f"kubeconfig exec plugin {command} failed: {proc.stderr.strip()}")
    status = json.loads(proc.stdout).get("status") or {}
    return dict(status)


# --------------------------------------------------------------------------- choice


def test_environment() -> LocalApiServer | ExternalCluster:
    """The environment to test against (not started).

    :class:`ExternalCluster` when ``$KONDUCTOR_TEST_KUBECONFIG`` is set, otherwise a
    :class:`LocalApiServer`.
    """
    if os.environ.get(ENV_KUBECONFIG):
        return ExternalCluster()
    return LocalApiServer()


# Not a test, despite its name: keep pytest from collecting it when imported into a
# test module.
test_environment.__test__ = False  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- CLI


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _cmd_up(args: argparse.Namespace) -> int:
    server = LocalApiServer(binary=args.binary, watch_cache=args.watch_cache)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server.start()
        kc = server.admin_kubeconfig
        print(f"# kube-apiserver {server.server} is ready ({server.startup_seconds:.1f} s)")
        print(f"# etcd {server.etcd_endpoint}; pids {server.pids}; logs in {server.workdir}")
        print(f"export KUBECONFIG={kc}")
        print(f"# unprivileged (alice, group team-a): export KUBECONFIG={server.alice_kubeconfig}")
        print(f"# bob (group team-b):                 export KUBECONFIG={server.bob_kubeconfig}")
        for name, token in server.tokens.items():
            print(f"# token {name}: {token}")
        print(
            f"# to run the test suite against this server: export {ENV_KUBECONFIG}={kc}"
            " (compaction tests need a private server, they are unavailable then)"
        )
        print("# Ctrl-C or SIGTERM stops kube-apiserver and etcd", flush=True)
        while server.running:
            time.sleep(1)
        print(f"kube-apiserver or etcd exited unexpectedly; see {server.workdir}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated):
        return 0
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m konductor.testing.apiserver",
        description="Run a real kube-apiserver + etcd on loopback for konductor development.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a local server and wait until Ctrl-C / SIGTERM")
    up.add_argument("--binary", help=f"kube-apiserver binary (default: ${ENV_BINARY} or build)")
    up.add_argument(
        "--watch-cache",
        action="store_true",
        help="keep the apiserver watch cache (then etcd compaction cannot force 410)",
    )
    args = parser.parse_args(argv)
    try:
        return _cmd_up(args)
    except KubeEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
