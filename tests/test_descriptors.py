"""What a process holds, told apart (optkit.lab._descriptors): connections and the rest."""

from __future__ import annotations

import os
import socket

from optkit.lab._descriptors import connections, judge_pools


def test_connections_are_told_from_the_other_descriptors() -> None:
    """A connection accepted on the port is inbound, one opened to the upstream port is
    outbound, the listening socket is neither; closed, they are gone again."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        before = connections(os.getpid(), port, port)
        assert before.inbound == before.outbound == 0
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        held = connections(os.getpid(), port, port)
        assert (held.inbound, held.outbound) == (1, 1)
        assert held.fds == before.fds + 2 and held.other == before.other
        client.close()
        accepted.close()
        after = connections(os.getpid(), port, port)
        assert (after.inbound, after.outbound, after.fds) == (0, 0, before.fds)


def test_a_pool_is_judged_by_its_bound_and_by_what_it_left() -> None:
    """Within the bound and drained: ok; over the bound, or a connection left: not."""
    bounds = {"a": (18, "the client's limit"), "b": (18, "same"), "c": (4, "small")}
    judged = judge_pools({"a": 18, "b": 3, "c": 5}, bounds, {"a": 0, "b": 1, "c": 0})
    assert [judged[k]["ok"] for k in "abc"] == [True, False, False]
    assert judged["a"] == {"peak": 18, "bound": 18, "why": "the client's limit",
                           "left_after_load": 0, "ok": True}
    assert judge_pools({"a": 2}, {"a": (4, "x")}, {})["a"]["ok"]  # drain not measured
