"""``redis+sentinel://`` connections: the URL, and finding the primary again when it moves.

The Sentinel here is a stand-in (a socket that answers ``SENTINEL get-master-addr-by-name`` with
the address the test sets), in front of two real servers whose roles the test swaps, so that what
a connection does at each step is certain: the failover test (tests/test_sentinel_failover.py)
runs real Sentinels. The last tests are ``OJS_DURABILITY=replicated`` around a demotion: a WAIT
that a replica never confirms (its link through a fault proxy), ended by the demotion.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
from redis.asyncio import Redis

from runtime import timefmt
from runtime.broker import BACKEND_ERRORS, sentinel
from runtime.broker.clients import blocking_from_url, from_url
from runtime.broker.core import Broker, Completion
from runtime.broker.durability import NotReplicated, ReplicatedWrites
from runtime.broker.wire import CommandNotSent, Wire
from runtime.config import Settings
from runtime.embedded_redis import ServerBinaryNotFoundError, find_server_binary, redacted
from tests.broker.conftest import body, new_job
from tests.conftest import skip_or_fail
from tests.fixtures.procs import free_port, wait_until
from tests.fixtures.sentinel_cluster import Node, wait_replica_online
from tests.fixtures.tcp_proxy import FaultProxy


def test_the_url_names_the_sentinels_the_master_the_database_and_both_credentials(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OJS_SENTINEL_PASSWORD", raising=False)
    target, primary = sentinel.parse_url(
        "redis+sentinel://app:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/jobs/3?sentinel_password=sp")
    assert target.sentinels == [("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381)]
    assert target.master == "jobs"
    assert (target.username, target.password) == (None, "sp")
    assert primary == {"db": 3, "username": "app", "password": "s@cret"}


def test_the_master_and_the_sentinel_password_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OJS_SENTINEL_MASTER", "jobs")
    monkeypatch.setenv("OJS_SENTINEL_PASSWORD", "from-env")
    target, primary = sentinel.parse_url("redis+sentinel://127.0.0.1:26379")
    assert (target.master, target.password, primary["db"]) == ("jobs", "from-env", 0)


def test_a_tls_url_carries_its_tls_keywords_to_every_connection(tmp_path: Path) -> None:
    from tests.fixtures.tls_redis import make_certificates

    make_certificates(tmp_path)
    given = {"ssl_ca_certs": str(tmp_path / "ca.pem"), "ssl_certfile": str(tmp_path / "client.pem"),
             "ssl_keyfile": str(tmp_path / "client.key"), "socket_timeout": 2.0}
    # The URL's query wins over the settings' keywords, as for rediss://
    url = "rediss+sentinel://10.0.0.1/jobs?ssl_cert_reqs=none&ssl_check_hostname=false&ssl_min_version=771"
    target, primary = sentinel.parse_url(url, **given)
    assert target.tls_options == {k: v for k, v in given.items() if k.startswith("ssl_")} | {
        "ssl_cert_reqs": "none", "ssl_check_hostname": False, "ssl_min_version": 771}  # typed, as for rediss://
    assert target.tls is not None and target.tls.verify_mode == ssl.CERT_NONE and not target.tls.check_hostname
    assert target.tls.minimum_version == ssl.TLSVersion.TLSv1_2
    assert "ssl_certfile" not in primary  # the primary's own options: db and credentials
    options = sentinel.pool_options(url, **given)
    assert options["connection_class"] is sentinel.SentinelPrimarySSLConnection
    assert options["ssl_certfile"] == given["ssl_certfile"]
    assert sentinel.pool_options(url, blocking=True, **given)["connection_class"] is (
        sentinel.BlockingSentinelPrimarySSLConnection)
    # A plain URL has none, whatever the keywords
    plain, _ = sentinel.parse_url("redis+sentinel://10.0.0.1/jobs", **given)
    assert (plain.tls, plain.tls_options) == (None, None)
    assert sentinel.pool_options("redis+sentinel://10.0.0.1/jobs")["connection_class"] is sentinel.SentinelPrimaryConnection


def test_a_url_without_a_master_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OJS_SENTINEL_MASTER", raising=False)
    with pytest.raises(ValueError, match="master name"):
        sentinel.parse_url("redis+sentinel://127.0.0.1:26379")


class FakeSentinel:
    """Answers every ``SENTINEL get-master-addr-by-name`` with `primary_port` (on 127.0.0.1)."""

    def __init__(self, primary_port: int) -> None:
        self.primary_port = primary_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        reader = hiredis.Reader()
        with conn:
            while data := conn.recv(4096):
                reader.feed(data)
                while reader.gets() is not False:
                    port = str(self.primary_port).encode()
                    conn.sendall(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    try:
        binary = find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    nodes = [Node(binary, tmp_path, f"node-{i}", port, "--port", str(port), "--save", "", "--appendonly", "no",
                  "--bind", "127.0.0.1") for i, port in enumerate((free_port(), free_port()))]
    nodes[0].start()
    nodes[1].start("--replicaof", "127.0.0.1", str(nodes[0].port))
    yield nodes[0], nodes[1]
    for node in nodes:
        node.kill()


def _swap_roles(primary: Node, replica: Node) -> None:
    """`replica` becomes the primary and `primary` its replica, as a failover leaves them."""
    replica.client().execute_command("REPLICAOF", "NO", "ONE")
    primary.client().execute_command("REPLICAOF", "127.0.0.1", str(replica.port))
    wait_until(lambda: primary.client().execute_command("ROLE")[0] == b"slave", what="the old primary demoted")


def test_the_lean_connection_follows_the_primary_a_readonly_reply_and_the_role_check_say_it_moved(
        two_servers: tuple[Node, Node]) -> None:
    primary, replica = two_servers
    fake = FakeSentinel(primary.port)
    wire = Wire.from_url(f"redis+sentinel://127.0.0.1:{fake.port}/jobs")

    async def go() -> None:
        assert await wire.execute("SET", "k", "on the first primary") == b"OK"
        _swap_roles(primary, replica)
        # The open connection now talks to a replica: the refused write did not run, and is
        # reported as not sent, not as a script error.
        with pytest.raises(CommandNotSent, match="READONLY"):
            await wire.execute("SET", "k", "refused")
        # The Sentinel has not caught up yet: the server it names is no primary (ROLE), so no
        # command goes there, not even a read a replica would answer.
        with pytest.raises(CommandNotSent, match="not the primary"):
            await wire.execute("GET", "k")
        fake.primary_port = replica.port
        assert await wire.execute("SET", "k", "on the new primary") == b"OK"
        await wire.close()

    try:
        asyncio.run(go())
        assert replica.client().get("k") == b"on the new primary"
    finally:
        fake.close()


def test_redis_py_clients_follow_the_primary_too(two_servers: tuple[Node, Node]) -> None:
    primary, replica = two_servers
    fake = FakeSentinel(primary.port)
    url = f"redis+sentinel://127.0.0.1:{fake.port}/jobs"
    blocking = blocking_from_url(url, socket_timeout=2)

    async def go() -> None:
        client = from_url(url, socket_timeout=2)
        try:
            await client.set("a", "1")
            blocking.set("b", "1")
            _swap_roles(primary, replica)
            fake.primary_port = replica.port
            # A READONLY reply closes the connection; redis-py's retry then connects anew, to
            # the primary the Sentinel names now.
            try:
                await client.set("a", "2")
            except sentinel.NotPrimary:
                await client.set("a", "2")
            try:
                blocking.set("b", "2")
            except sentinel.NotPrimary:
                blocking.set("b", "2")
        finally:
            await client.aclose()

    try:
        asyncio.run(go())
        assert replica.client().mget("a", "b") == [b"2", b"2"]
    finally:
        blocking.close()
        fake.close()


def test_a_redis_py_connection_is_refused_by_a_server_whose_role_is_not_master_as_the_lean_one_is(
        two_servers: tuple[Node, Node]) -> None:
    """While the Sentinels still name a demoted primary, no connection may talk to it: redis-py's
    connections serve the probe's PING (/ready), the admin reads and the pool's reconcile (held_claims), which
    a replica would answer with what it has."""
    primary, replica = two_servers
    _swap_roles(primary, replica)  # the Sentinel (the fake) still names the old primary
    fake = FakeSentinel(primary.port)
    url = f"redis+sentinel://127.0.0.1:{fake.port}/jobs"

    async def go() -> tuple[Any, Any]:
        wire = Wire.from_url(url)
        try:
            lean: Any = await wire.execute("PING")
        except CommandNotSent as err:
            lean = err
        await wire.close()
        client = from_url(url, socket_timeout=2)
        try:
            via_redis_py: Any = await client.ping()
        except Exception as err:  # noqa: BLE001
            via_redis_py = err
        await client.aclose()
        return lean, via_redis_py

    blocking = blocking_from_url(url, socket_timeout=2)
    try:
        lean, via_redis_py = asyncio.run(go())
        try:
            via_blocking: Any = blocking.ping()
        except Exception as err:  # noqa: BLE001
            via_blocking = err
    finally:
        blocking.close()
        fake.close()
    assert isinstance(lean, CommandNotSent)  # the lean connection refuses the replica
    assert isinstance(via_redis_py, redis.ConnectionError), f"redis-py answered {via_redis_py!r} from a replica"
    assert isinstance(via_blocking, redis.ConnectionError), f"redis-py answered {via_blocking!r} from a replica"
    # Once the Sentinel names the new primary, the next connection goes there.
    fake = FakeSentinel(replica.port)
    blocking = blocking_from_url(f"redis+sentinel://127.0.0.1:{fake.port}/jobs", socket_timeout=2)
    try:
        assert blocking.ping()
    finally:
        blocking.close()
        fake.close()


def test_no_sentinel_that_knows_the_primary_is_a_connection_error() -> None:
    target = sentinel.SentinelTarget([("127.0.0.1", free_port())], "jobs")
    with pytest.raises(sentinel.PrimaryNotFound):
        asyncio.run(sentinel.primary_address(target))
    with pytest.raises(redis.ConnectionError):
        sentinel.primary_address_blocking(target)


def test_logs_show_neither_password_of_a_sentinel_url() -> None:
    shown = redacted("redis+sentinel://app:primary-secret@10.0.0.1:26379/jobs?sentinel_password=sentinel-secret")
    assert "primary-secret" not in shown and "sentinel-secret" not in shown
    assert shown.startswith("redis+sentinel://app:***@10.0.0.1:26379/jobs")


def test_a_readonly_reply_in_a_batch_makes_only_the_refused_command_and_those_after_it_not_sent(
        tmp_path: Path) -> None:
    """A batch (a group commit) can span a demotion, e.g. one read in two parts around a FAILOVER:
    the commands answered before the READONLY one ran. Reported as not sent, an HTTP enqueue among
    them would get a retryable 503 whose retry enqueues the job a second time."""
    try:
        binary = find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    node = Node(binary, tmp_path, "node-0", (port := free_port()), "--port", str(port), "--save", "",
                "--appendonly", "no", "--bind", "127.0.0.1")
    node.start()
    fake = FakeSentinel(port)
    wire = Wire.from_url(f"redis+sentinel://127.0.0.1:{fake.port}/jobs")
    # A demoted primary's refusal, simulated with a script reply.
    refused = ("EVAL", "return redis.error_reply('READONLY You cannot write against a read only replica.')", 0)

    async def go() -> tuple[list[Any], list[Any]]:
        replies = await wire.execute_many(("SET", "before", "yes"), refused, ("SET", "after", "yes"))
        writes = ReplicatedWrites(wire.execute_many, replicas=0, timeout_ms=10)
        first = asyncio.ensure_future(writes.call(("SET", "enqueued", "yes")))
        second = asyncio.ensure_future(writes.call(refused))
        calls = list(await asyncio.gather(first, second, return_exceptions=True))
        await wire.close()
        return replies, calls

    try:
        (ran, refused_reply, after), (first, second) = asyncio.run(go())
        assert ran == b"OK"
        assert isinstance(refused_reply, CommandNotSent) and isinstance(after, CommandNotSent)
        assert node.client().mget("before", "enqueued") == [b"yes", b"yes"]
        assert isinstance(second, CommandNotSent)
        # The first call ran; its WAIT, after the refused command, was not sent: unknown outcome.
        assert isinstance(first, NotReplicated), f"the first call ran, yet: {first!r}"
    finally:
        fake.close()
        node.kill()


# --- OJS_DURABILITY=replicated around a demotion --------------------------------------------------

PREFIX = "{ojs-durability}:"


@pytest.fixture
def lagging_pair(tmp_path: Path) -> Iterator[tuple[Node, Node, FaultProxy]]:
    """A primary and a replica that replicates through a fault proxy."""
    try:
        binary = find_server_binary()
    except ServerBinaryNotFoundError as err:
        skip_or_fail(str(err))
    data = ("--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0")
    primary = Node(binary, tmp_path, "node-0", (p0 := free_port()), "--port", str(p0), *data)
    replica = Node(binary, tmp_path, "node-1", (p1 := free_port()), "--port", str(p1), *data)
    primary.start()
    link = FaultProxy(f"redis://127.0.0.1:{primary.port}").start()
    replica.start("--replicaof", "127.0.0.1", str(link.port))
    wait_replica_online(primary)
    yield primary, replica, link
    for node in (primary, replica):
        node.kill()
    link.stop()


def _brokers(url: str, timeout_ms: int) -> tuple[Redis, Broker, Broker]:
    client = from_url(url)
    plain = Broker(client, Settings(redis_url=url, key_prefix=PREFIX))
    replicated = Broker(client, Settings(redis_url=url, key_prefix=PREFIX, durability="replicated",
                                         durability_timeout_ms=timeout_ms))
    return client, plain, replicated


def _replica_has_everything(primary: Node, replica: Node) -> bool:
    return bool(primary.client().info("replication")["master_repl_offset"]
                == replica.client().info("replication")["slave_repl_offset"])


def test_a_resent_ack_after_a_reconnect_is_not_confirmed_by_a_wait_that_covers_nothing(
        lagging_pair: tuple[Node, Node, FaultProxy]) -> None:
    """A re-sent ack on a new connection writes nothing (ack.lua's repeat), yet its WAIT still
    waits for the server's replication offset as of that command (Redis sets a client's write
    offset to the primary's after every command), so it is not confirmed while the replica lacks
    the first send's write."""
    primary, replica, link = lagging_pair
    client, plain, replicated = _brokers(f"redis://127.0.0.1:{primary.port}", 300)

    async def go() -> None:
        (job_id,) = [r.job_id for r in await plain.enqueue([new_job(body())], now_ms=timefmt.now_ms())]
        (claimed,) = await plain.fetch(["default"], worker_id="w1")
        wait_until(lambda: _replica_has_everything(primary, replica), what="the replica in sync")
        link.blackhole()  # the replica stays connected (for the primary) but acknowledges nothing more
        ack = Completion(job_id=job_id, worker_id="w1", claim=claimed[b"claim"].decode())
        with pytest.raises(NotReplicated):
            await replicated.ack_many([ack])
        # The connection is lost (a network blip, a proxy, an idle timeout): the pool sends again.
        assert replicated.scripts._replicated_wire is not None
        await replicated.scripts._replicated_wire.close()
        try:
            results = await replicated.ack_many([ack])
        except NotReplicated:
            return  # the replica still lacks the ack
        replica_state = replica.client().hget(f"{PREFIX}job:{job_id}", "state")
        pytest.fail(f"the re-sent ack was confirmed ({results}) although the replica has the job "
                    f"{replica_state!r}: a failover now loses the completion and the job runs again")

    async def main() -> None:
        try:
            await go()
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_wait_ended_by_a_demotion_is_an_unknown_outcome_not_a_script_error(
        lagging_pair: tuple[Node, Node, FaultProxy]) -> None:
    """A primary demoted while an ack's WAIT blocks (REPLICAOF without Sentinel's CLIENT KILL: the
    FAILOVER command, an operator, _swap_roles) answers the WAIT with -UNBLOCKED. The ack ran on
    the old primary; its caller must get an unknown outcome (a pool then sends it again to the new
    primary), not a ResponseError (the pool would give up on the ack and drop the job from its
    heartbeats: the lease lapses and the job runs again)."""
    primary, replica, link = lagging_pair
    fake = FakeSentinel(primary.port)
    client, plain, replicated = _brokers(f"redis+sentinel://127.0.0.1:{fake.port}/jobs", 3000)

    def blocked_in_wait() -> bool:
        return any(c["cmd"] == "wait" and "b" in c["flags"] for c in primary.client().client_list())

    async def go() -> BaseException | Any:
        (job_id,) = [r.job_id for r in await plain.enqueue([new_job(body())], now_ms=timefmt.now_ms())]
        (claimed,) = await plain.fetch(["default"], worker_id="w1")
        wait_until(lambda: _replica_has_everything(primary, replica), what="the replica in sync")
        link.blackhole()
        ack = Completion(job_id=job_id, worker_id="w1", claim=claimed[b"claim"].decode())
        sent = asyncio.ensure_future(replicated.ack_many([ack]))
        while not blocked_in_wait():  # the ack ran, its WAIT blocks
            await asyncio.sleep(0.005)
        replica.client().execute_command("REPLICAOF", "NO", "ONE")
        primary.client().execute_command("REPLICAOF", "127.0.0.1", str(replica.port))
        fake.primary_port = replica.port
        try:
            return await sent
        except BaseException as err:  # noqa: BLE001
            return err

    async def main() -> Any:
        try:
            return await go()
        finally:
            await client.aclose()

    try:
        outcome = asyncio.run(main())
    finally:
        fake.close()
    assert isinstance(outcome, BACKEND_ERRORS), f"{type(outcome).__name__}: {outcome}"
    assert isinstance(outcome, NotReplicated), f"{type(outcome).__name__}: {outcome}"
