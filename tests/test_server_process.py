"""The launcher the tests and benchmarks share starts the server again on
other ports when a port it picked was taken before the server could bind it."""

from __future__ import annotations

import socket

from bench import common


def test_a_port_taken_before_the_bind_is_replaced(monkeypatch, make_repository, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    picks = iter([taken.getsockname()[1]])  # the first pick (the gRPC port) is already bound
    real = common.free_port
    monkeypatch.setattr(common, "free_port", lambda: next(picks, None) or real())
    try:
        server = common.ServerProcess(make_repository(), tmp_path / "server.log", "--drain-delay", "0")
        server.wait_serving()
        assert server.port != taken.getsockname()[1]
        assert server.terminate() == 0
    finally:
        taken.close()
