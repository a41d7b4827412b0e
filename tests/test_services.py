"""The real services the other tests rely on: they start, hold data exactly, and go away."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from ctrguard.errors import ServiceError
from devtools.services import (
    ServiceStartError,
    _s3_request,
    consume_to_eof,
    ensure_topics,
    free_port,
    produce_all,
    start_broker,
    start_object_store,
    start_redis,
    wait_until,
)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _topic_partitions(bootstrap: str) -> dict[str, int]:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


# --------------------------------------------------------------------------- broker


def test_broker_answers_metadata(broker):
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.is_running()
    AdminClient(broker.client_config()).list_topics(timeout=5)


def test_topics_are_created_with_the_requested_partitions(broker, topic_factory):
    topics = topic_factory(partitions=2)
    assert set(topics) == {"impressions", "clicks", "figures", "alerts", "deadletter"}
    assert len(set(topics.values())) == 5
    listed = _topic_partitions(broker.bootstrap)
    assert {listed[name] for name in topics.values()} == {2}


def test_unique_topics_differ_between_calls(topic_factory):
    assert set(topic_factory().values()).isdisjoint(topic_factory().values())


def test_ensure_topics_is_idempotent(broker, unique_topics):
    names = list(unique_topics.values())
    assert ensure_topics(broker.bootstrap, names) == dict.fromkeys(names, 1)
    assert ensure_topics(broker.bootstrap, names) == dict.fromkeys(names, 1)


def test_ensure_topics_refuses_a_partition_count_mismatch(broker, unique_topics):
    with pytest.raises(ServiceError, match="another partition count") as info:
        ensure_topics(broker.bootstrap, [unique_topics["clicks"]], partitions=3)
    assert not info.value.retryable


def test_produce_then_consume_exactly_n_messages(broker, topic_factory):
    topic = topic_factory(partitions=2, keys=("events",))["events"]
    n = 5_000
    records = [(f"campaign-{i % 13}".encode(), str(i).encode()) for i in range(n)]

    assert produce_all(broker.bootstrap, topic, records) == n
    messages = consume_to_eof(broker.bootstrap, topic)

    values = [int(m.value()) for m in messages]
    assert len(values) == n
    assert sorted(values) == list(range(n))
    assert {m.partition() for m in messages} == {0, 1}
    # Order holds within a partition, so per key.
    for partition in (0, 1):
        offsets = [m.offset() for m in messages if m.partition() == partition]
        assert offsets == list(range(len(offsets)))


def test_consume_to_eof_of_an_empty_topic_is_empty(broker, unique_topics):
    assert consume_to_eof(broker.bootstrap, unique_topics["alerts"], timeout=15) == []


def test_consume_to_eof_waits_for_min_messages(broker, unique_topics):
    topic = unique_topics["figures"]
    produce_all(broker.bootstrap, topic, [b"only-one"])
    with pytest.raises(ServiceError, match="wanted at least 2"):
        consume_to_eof(broker.bootstrap, topic, min_messages=2, timeout=1)


def test_producing_to_an_unknown_topic_fails_instead_of_auto_creating(broker):
    topic = f"never-created-{free_port()}"
    with pytest.raises(ServiceError, match="not delivered"):
        produce_all(broker.bootstrap, topic, [b"x"], timeout=1)
    assert topic not in _topic_partitions(broker.bootstrap)


@pytest.mark.integration
def test_broker_stop_leaves_no_process(tmp_path):
    with start_broker(log_dir=tmp_path) as own:
        pid = own.pid
        assert pid is not None and not _pid_gone(pid)
        assert "ready in" in own.log_tail()
    assert not own.is_running()
    assert _pid_gone(pid)
    own.stop()  # idempotent


def test_broker_on_a_taken_port_fails_with_its_log(broker, tmp_path):
    with pytest.raises(ServiceStartError, match="AddrInUse"):
        start_broker(port=broker.port, log_dir=tmp_path, timeout=10)
    assert broker.is_running()


@pytest.mark.integration
def test_broker_kill_then_restart_on_the_same_port(tmp_path):
    with start_broker(log_dir=tmp_path) as own:
        port, old_pid = own.port, own.pid
        own.kill()
        assert _pid_gone(old_pid) and not own.is_running()
        own.restart()
        assert own.port == port and own.pid != old_pid
        topic = "after-restart"
        ensure_topics(own.bootstrap, [topic])
        produce_all(own.bootstrap, topic, [b"a", b"b"])
        assert [m.value() for m in consume_to_eof(own.bootstrap, topic)] == [b"a", b"b"]



@pytest.mark.integration
def test_broker_restart_on_a_port_taken_meanwhile_fails(tmp_path):
    # The earlier run's "ready" line in the same log must not count for the new run.
    with start_broker(log_dir=tmp_path / "a") as own:
        own.kill()
        with start_broker(port=own.port, log_dir=tmp_path / "b"):
            with pytest.raises(ServiceStartError, match="AddrInUse"):
                own.restart(timeout=10)
            assert not own.is_running()


# --------------------------------------------------------------------------- redis


def test_redis_url_gives_each_test_a_clean_server(redis_server, request):
    for db in (0, 5):
        redis_server.client(db=db).set("left-behind", "1")
    url = request.getfixturevalue("redis_url")  # set up now, after the writes
    assert url == redis_server.url
    assert redis.Redis.from_url(url).dbsize() == 0
    assert redis_server.client(db=5).dbsize() == 0


def test_redis_url_brings_a_killed_session_server_back(redis_server, request):
    redis_server.kill()
    url = request.getfixturevalue("redis_url")
    assert redis.Redis.from_url(url, socket_timeout=2).ping()


def test_password_protected_redis(redis_factory):
    server = redis_factory(password="s3cret with space", acl_user="ctrguard",
                           acl_password="acl:pw")
    assert "s3cret" not in server.url_without_password
    assert "s3cret" not in repr(server)

    anonymous = redis.Redis.from_url(server.url_without_password, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("k", "v")

    with_password = redis.Redis.from_url(server.url, socket_timeout=2)
    assert with_password.set("k", "v")
    acl_client = redis.Redis.from_url(
        server.url_for(username="ctrguard", password="acl:pw"), socket_timeout=2)
    assert acl_client.get("k") == b"v"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(server.url_for(username="ctrguard", password="wrong"),
                             socket_timeout=2).ping()
    for client in (anonymous, with_password, acl_client):
        client.close()


def test_redis_kill_then_restart_on_the_same_port(redis_factory):
    server = redis_factory()
    port, old_pid = server.port, server.pid
    server.client().set("k", "v")

    server.kill()
    assert _pid_gone(old_pid)
    with pytest.raises(redis.ConnectionError):
        server.client(socket_connect_timeout=1).ping()

    server.restart()
    assert server.port == port and server.pid != old_pid
    assert server.client().ping()
    assert server.client().get("k") is None  # nothing persisted


@pytest.mark.integration
def test_redis_stop_leaves_no_process():
    with start_redis() as server:
        pid = server.pid
        assert not _pid_gone(pid)
    assert _pid_gone(pid)
    assert not server.is_running()


def test_redis_on_a_taken_port_fails_with_its_log(redis_server):
    with pytest.raises(ServiceStartError, match="Address already in use"):
        start_redis(port=redis_server.port)
    assert redis_server.client().ping()


def test_redis_rejects_half_an_acl_user():
    with pytest.raises(ValueError, match="together"):
        start_redis(acl_user="only-a-name")


def test_wait_until_returns_the_first_truthy_value():
    values = iter([0, None, "", "done"])
    assert wait_until(lambda: next(values), timeout=5, interval=0) == "done"



_FORGETFUL_SCRIPT = """
import sys, time
from devtools.services import start_broker, start_redis
broker, server = start_broker(), start_redis()
print(broker.pid, server.pid, flush=True)
if sys.argv[1] == "wait":
    time.sleep(120)
"""


@pytest.mark.integration
@pytest.mark.parametrize("ending", ["normal exit", "SIGTERM"])
def test_services_are_stopped_when_the_caller_forgets(ending):

    proc = subprocess.Popen(
        [sys.executable, "-c", _FORGETFUL_SCRIPT, "exit" if ending == "normal exit" else "wait"],
        stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(pids) == 2
        if ending == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert status == (0 if ending == "normal exit" else -signal.SIGTERM)
    assert all(_pid_gone(pid) for pid in pids)


# --------------------------------------------------------------------------- container


def test_docker_entrypoint_initialises_recovery_once(tmp_path):
    """The entrypoint creates the Bytewax partitions on first start only (a second
    initialisation would crash Bytewax), tolerates lost+found, and execs `ctrguard run`."""
    entrypoint = Path(__file__).resolve().parent.parent / "docker" / "entrypoint.sh"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "ctrguard").write_text('#!/bin/sh\necho "ctrguard $*"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    recovery = tmp_path / "recovery"
    (recovery / "lost+found").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "RECOVERY_DIR": str(recovery), "RECOVERY_PARTITIONS": "3",
           "CTRGUARD_CONFIG": "/etc/ctrguard/config.yaml"}

    def start(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(entrypoint), *args], env=env, capture_output=True,
                              text=True, timeout=60, check=True)

    first = start("--workers", "3")
    assert first.stdout.strip() == (f"ctrguard run --config /etc/ctrguard/config.yaml "
                                    f"--recovery-dir {recovery} --workers 3")
    parts = sorted(p.name for p in recovery.glob("part-*.sqlite3"))
    assert parts == ["part-0.sqlite3", "part-1.sqlite3", "part-2.sqlite3"]
    mtimes = {p: (recovery / p).stat().st_mtime_ns for p in parts}

    second = start()
    assert "initialising" not in second.stderr
    assert {p: (recovery / p).stat().st_mtime_ns for p in parts} == mtimes
    assert sorted(p.name for p in recovery.iterdir()) == ["lost+found", *parts]



# --------------------------------------------------------------------------- object store


@pytest.mark.integration
def test_broker_on_object_store_keeps_topics_records_and_offsets_across_restart(tmp_path):
    """tansu's s3:// storage on the SeaweedFS store: after SIGTERM and a start on the same
    port, the topics (with their partition counts), every record, a consumer group's
    committed offsets and the producer's idempotence state are all there."""
    with start_object_store(log_dir=tmp_path) as store, \
            start_broker(storage=store, log_dir=tmp_path) as own:
        assert own.durable and own.storage == f"s3://{store.bucket}/"
        assert "storage: s3://tansu/" in own.log_tail()
        ensure_topics(own.bootstrap, ["kept"], partitions=3)
        ensure_topics(own.bootstrap, ["kept-too"], partitions=1)
        records = [(f"k{i % 7}".encode(), f"v{i}".encode()) for i in range(2_000)]
        produce_all(own.bootstrap, "kept", records)
        committed = [TopicPartition("kept", p, 100 + p) for p in range(3)]
        group = Consumer({"bootstrap.servers": own.bootstrap, "group.id": "keeper"})
        group.commit(offsets=committed, asynchronous=False)
        group.close()
        batches = [k for k in store.keys("clusters/") if k.endswith(".batch")]
        assert batches, store.keys()

        port, old_pid = own.port, own.pid
        own.restart()
        assert own.port == port and own.pid != old_pid

        partitions = _topic_partitions(own.bootstrap)
        assert partitions["kept"] == 3 and partitions["kept-too"] == 1
        values = sorted(m.value() for m in consume_to_eof(own.bootstrap, "kept"))
        assert values == sorted(v for _k, v in records)
        group = Consumer({"bootstrap.servers": own.bootstrap, "group.id": "keeper"})
        try:
            got = group.committed([TopicPartition("kept", p) for p in range(3)], timeout=10)
        finally:
            group.close()
        assert [(tp.partition, tp.offset) for tp in got] == [(p, 100 + p) for p in range(3)]
        # Writing after the restart continues the offsets; nothing is overwritten.
        produce_all(own.bootstrap, "kept", [(b"k0", b"after")])
        after = consume_to_eof(own.bootstrap, "kept")
        assert len(after) == len(records) + 1
        for p in range(3):
            offsets = [m.offset() for m in after if m.partition() == p]
            assert offsets == list(range(len(offsets)))


@pytest.mark.integration
def test_object_store_keeps_objects_across_its_own_restart_and_cleans_up(tmp_path):
    with pytest.raises(ValueError, match="bucket name"):
        start_object_store(bucket="b1")
    store = start_object_store(data_dir=tmp_path / "data", bucket="bucket-1")
    try:
        status, _ = _s3_request("PUT", f"{store.endpoint}/bucket-1/a/b.txt")
        assert status == 200
        assert store.keys() == ["a/b.txt"] and store.keys("x") == []
        pid, port = store.pid, store.port
        store.restart()
        assert store.pid != pid and store.port == port
        assert store.keys() == ["a/b.txt"]
        assert store.get("a/b.txt") == b""
    finally:
        store.stop()
    assert not store.is_running() and _pid_gone(pid)
    sockets = [f"/tmp/seaweedfs-{c.removesuffix('_grpc')}-grpc-{p}.sock"
               for c, p in store.ports.items() if c.endswith("_grpc")]
    assert not [s for s in sockets if os.path.exists(s)]
    store.stop()  # idempotent


@pytest.mark.integration
def test_object_store_on_a_taken_port_fails_with_its_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServiceStartError, match="not available|address already in use"):
            start_object_store(port=taken.getsockname()[1], log_dir=tmp_path, timeout=20)


def test_a_forked_worker_ended_by_its_pool_leaves_the_servers_files_alone(redis_factory):
    """``ctrguard tune`` scores in a fork pool, which ends its workers with SIGTERM; a worker
    inherits the handler that stops this process's services and removes their directories.
    It removed the parent's: a Redis killed later could not restart (its redis.conf gone)."""
    import multiprocessing

    from devtools import services

    server = redis_factory()
    previous = signal.signal(signal.SIGTERM, services._stop_all_then_die)
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:  # exit: SIGTERM each worker
            assert pool.apply(os.getpid) != os.getpid()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (server.workdir / "redis.conf").exists()
    server.kill()
    server.restart()
    assert server.client().ping()
