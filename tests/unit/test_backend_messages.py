"""ErrorResponse helpers: telling a FATAL apart, and naming the server that ended a session."""

from __future__ import annotations

from router.protocol.pg import backend as be


def test_fatal_and_panic_are_told_apart_from_errors() -> None:
    assert be.is_fatal_error(be.error_response("57P01", "terminating connection", severity="FATAL"))
    assert be.is_fatal_error(be.error_response("XX000", "crash", severity="PANIC"))
    assert not be.is_fatal_error(be.error_response("23505", "duplicate key"))


def test_localized_severity_does_not_hide_a_fatal() -> None:
    # S is translated ("FATAL" in the server's language), V never is.
    body = b"SSCHWERWIEGEND\x00VFATAL\x00C57P01\x00Mbeende Verbindung\x00\x00"
    msg = b"E" + (len(body) + 4).to_bytes(4, "big") + body
    assert be.is_fatal_error(msg)


def test_naming_the_server_keeps_every_other_field() -> None:
    original = be.error_response(
        "57P01", "terminating connection due to administrator command", severity="FATAL", detail="d", hint="h"
    )
    renamed = be.naming_server(original, "shard shard_a (app@127.0.0.1:5433)")
    fields = be.parse_error_fields(renamed[5:]).fields
    assert fields["M"] == "terminating connection due to administrator command"
    assert fields["D"] == "d\nSent by shard shard_a (app@127.0.0.1:5433)."
    assert (fields["C"], fields["S"], fields["V"], fields["H"]) == ("57P01", "FATAL", "FATAL", "h")
    assert renamed[0:1] == b"E" and int.from_bytes(renamed[1:5], "big") == len(renamed) - 1


def test_naming_the_server_makes_a_detail_when_there_is_none() -> None:
    original = be.error_response("57P01", "terminating connection due to administrator command", severity="FATAL")
    fields = be.parse_error_fields(be.naming_server(original, "shard shard_a")[5:]).fields
    assert fields["M"] == "terminating connection due to administrator command"
    assert fields["D"] == "Sent by shard shard_a."
