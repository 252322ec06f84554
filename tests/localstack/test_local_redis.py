"""The local redis-server: a free port, restarts that lose nothing, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from localstack import redis_server as local_redis
from localstack.redis_server import RedisServer, StartError


def test_fixture_url_is_flushed(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == redis_server.url
    assert redis_url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("left-behind", "1")  # the next test's redis_url must not see this
    finally:
        client.close()


def test_restart_keeps_port_and_every_stream_entry(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", die_with_parent=True)
    server.start()
    try:
        port, url = server.port, server.url
        client = redis.Redis.from_url(url)
        ids = [client.xadd("agentops:ns:agent:tasks", {"task_id": str(i), "prompt": "p"}) for i in range(100)]
        client.close()

        server.stop()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()

        # A new object on the same workdir (as a second `deploy up` would create) finds the port again.
        again = RedisServer(tmp_path / "redis", die_with_parent=True)
        again.start()
        server = again
        assert again.port == port
        client = redis.Redis.from_url(url)
        entries = client.xrange("agentops:ns:agent:tasks")
        client.close()
        assert [e[0] for e in entries or []] == ids
    finally:
        server.stop()


def test_taken_port_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartError, match=rf"port {port} on 127.0.0.1 is taken"):
            RedisServer(tmp_path, port=port).start()


def test_missing_redis_server_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(local_redis, "FALLBACK_BINARY", str(tmp_path / "absent"))
    with pytest.raises(StartError, match=r"apt-get install -y redis-server"):
        RedisServer(tmp_path).start()
