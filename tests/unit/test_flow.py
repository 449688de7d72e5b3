"""Flow control between a client and a server connection (router.net.flow), on recording transports:
the interleavings of filling, draining, attaching and detaching that once lost a resume."""

from __future__ import annotations

from router.net.flow import FlowSide


class RecordingTransport:
    """Records whether its reading is paused, and refuses a pause or resume that changes nothing
    (flow control must track the level, not send the same edge twice)."""

    def __init__(self) -> None:
        self.reading = True
        self.closing = False

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing


def _side() -> tuple[FlowSide, RecordingTransport]:
    side, transport = FlowSide(), RecordingTransport()
    side.opened(transport)
    return side, transport


def test_a_backed_up_client_pauses_its_server_until_it_drains() -> None:
    client, client_socket = _side()
    server, server_socket = _side()
    server.link(client)
    client.writing_paused()
    assert not server_socket.reading and client_socket.reading
    client.writing_resumed()
    assert server_socket.reading


def test_a_transaction_ending_while_the_client_is_backed_up_does_not_leave_the_server_paused() -> None:
    # The interleaving that stalled: the client's buffer goes over its high-water mark as the last
    # bytes of a result (ReadyForQuery) are written; the transaction ends and the server goes back
    # to its pool; the client drains while no server is attached. The next client (or the same
    # one) to get that server must find it reading.
    client, _ = _side()
    other_client, _ = _side()
    server, server_socket = _side()
    server.link(client)
    client.writing_paused()
    server.unlink()  # detach at ReadyForQuery
    assert server_socket.reading
    client.writing_resumed()  # drained with nothing attached: nothing to resume, nothing lost
    server.link(other_client)
    assert server_socket.reading
    server.unlink()
    server.link(client)
    assert server_socket.reading


def test_a_client_still_backed_up_when_it_gets_a_server_pauses_that_server_at_once() -> None:
    client, _ = _side()
    first, first_socket = _side()
    second, second_socket = _side()
    first.link(client)
    client.writing_paused()
    first.unlink()
    second.link(client)  # next transaction, another server, the client has not drained yet
    assert first_socket.reading and not second_socket.reading
    client.writing_resumed()
    assert second_socket.reading


def test_the_routers_own_statements_are_not_held_up_by_a_slow_client() -> None:
    client, _ = _side()
    server, server_socket = _side()
    server.link(client)
    client.writing_paused()
    server.unlink()  # query_internal: the answer goes to the router
    assert server_socket.reading
    server.link(client)  # forwarding again, the client still backed up
    assert not server_socket.reading
    client.writing_resumed()
    assert server_socket.reading


def test_a_server_that_does_not_read_pauses_its_client_until_it_does_or_is_detached() -> None:
    client, client_socket = _side()
    server, _ = _side()
    server.link(client)
    server.writing_paused()  # COPY FROM faster than the server takes it
    assert not client_socket.reading
    server.writing_resumed()
    assert client_socket.reading
    server.writing_paused()
    server.unlink()  # the server was lost, or handed back
    assert client_socket.reading


def test_linking_to_another_peer_breaks_the_old_link_first() -> None:
    client, _ = _side()
    other_client, _ = _side()
    server, server_socket = _side()
    server.link(client)
    client.writing_paused()
    server.link(other_client)
    assert server_socket.reading and not client.linked
    client.writing_resumed()
    client.writing_paused()
    assert server_socket.reading  # the old client no longer holds this server back


def test_a_closing_transport_is_left_alone() -> None:
    client, _ = _side()
    server, server_socket = _side()
    server.link(client)
    server_socket.closing = True
    client.writing_paused()
    assert server_socket.reading and not server.reading_paused
