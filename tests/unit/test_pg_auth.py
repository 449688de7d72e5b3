"""Authentication math: md5, the SCRAM-SHA-256 server side (against the RFC 7677 vector, scramp's client
and hand-made libpq messages) and the scramp-based client side. Bad credentials or garbage only ever
raise AuthError."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scramp import ScramClient, ScramException, ScramMechanism

from router.protocol.pg.auth import (
    SCRAM,
    AuthError,
    ScramClientExchange,
    ScramServerExchange,
    ScramVerifier,
    check_md5,
    md5_password,
    new_md5_salt,
)

PASSWORD = "s3cret pässword"
# PBKDF2 is deliberately slow: derive once per module (a fixed salt keeps it reproducible).
VERIFIER = ScramVerifier(PASSWORD, salt=b"0123456789abcdef")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _attributes(message: bytes) -> dict[str, str]:
    pairs = (part.partition("=") for part in message.decode().split(","))
    return {name: value for name, _, value in pairs}


def _client_final(
    password: str, client_first_bare: str, server_first: bytes, gs2_header: str = "n,,"
) -> tuple[str, str]:
    """What libpq computes (RFC 5802 section 3): the client-final message and the server signature it expects."""
    attrs = _attributes(server_first)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = _hmac(salted, b"Client Key")
    without_proof = f"c={_b64(gs2_header.encode())},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
    return f"{without_proof},p={_b64(proof)}", f"v={_b64(server_signature)}"


def _started(client_nonce: str = "fyko+d2lbbFgONRv9qkxdawL") -> tuple[ScramServerExchange, bytes]:
    exchange = VERIFIER.start()
    return exchange, exchange.first(f"n,,n=,r={client_nonce}".encode())


# --- md5 ----------------------------------------------------------------------------------------------


def test_md5_password_formula() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"secretpostgres").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    assert md5_password("postgres", "secret", salt) == expected.encode() + b"\x00"  # a NUL-terminated payload
    assert md5_password("postgres", "secret", salt) == b"md5bb41a296aab6baccb36ff243a562abff\x00"


def test_md5_password_differs_per_salt_and_user() -> None:
    base = md5_password("alice", "pw", b"aaaa")
    assert md5_password("alice", "pw", b"aaab") != base
    assert md5_password("bob", "pw", b"aaaa") != base


def test_check_md5_accepts_with_or_without_nul() -> None:
    salt = new_md5_salt()
    answer = md5_password("alice", "pw", salt)
    assert check_md5("alice", "pw", salt, answer)
    assert check_md5("alice", "pw", salt, answer.rstrip(b"\x00"))


@pytest.mark.parametrize(
    "answer",
    [
        md5_password("alice", "wrong", b"salt"),
        md5_password("mallory", "pw", b"salt"),
        md5_password("alice", "pw", b"SALT"),
        b"",
        b"\x00",
        b"md5",
        b"pw\x00",  # the cleartext password is not an md5 answer
        b"\xff" * 40,
    ],
)
def test_check_md5_refuses(answer: bytes) -> None:
    assert not check_md5("alice", "pw", b"salt", answer)


def test_new_md5_salt_is_four_random_bytes() -> None:
    salts = {new_md5_salt() for _ in range(20)}
    assert all(len(salt) == 4 for salt in salts)
    assert len(salts) > 1


# --- the SCRAM verifier ---------------------------------------------------------------------------------


def test_verifier_matches_rfc_7677_vector() -> None:
    verifier = ScramVerifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(a ^ b for a, b in zip(proof, _hmac(verifier.stored_key, auth_message), strict=True))
    assert hashlib.sha256(client_key).digest() == verifier.stored_key
    assert _b64(_hmac(verifier.server_key, auth_message)) == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_verifier_matches_scramp() -> None:
    _salt, stored_key, server_key, iterations = ScramMechanism(SCRAM).make_auth_info(
        PASSWORD, iteration_count=ScramVerifier.ITERATIONS, salt=VERIFIER.salt
    )
    assert (stored_key, server_key, iterations) == (VERIFIER.stored_key, VERIFIER.server_key, 4096)


def test_verifier_salt_is_random_by_default() -> None:
    assert len(ScramVerifier("x").salt) == 16
    assert ScramVerifier("x").salt != ScramVerifier("x").salt


# --- the SCRAM server side ------------------------------------------------------------------------------


def test_scram_server_against_scramp_client() -> None:
    client = ScramClient([SCRAM], "alice", PASSWORD)
    client_first = client.get_client_first()
    assert client_first.startswith("n,,n=alice,r=")
    exchange = VERIFIER.start()
    server_first = exchange.first(client_first.encode())
    attrs = _attributes(server_first)
    assert attrs["r"].startswith(client_first.partition(",r=")[2])
    assert (attrs["s"], attrs["i"]) == (_b64(VERIFIER.salt), "4096")
    client.set_server_first(server_first.decode())
    server_final = exchange.final(client.get_client_final().encode())
    client.set_server_final(server_final.decode())  # raises if the server signature were wrong


def test_scram_server_against_the_routers_own_client() -> None:
    client = ScramClientExchange([SCRAM, "SCRAM-SHA-256-PLUS"], "alice", PASSWORD)
    exchange = VERIFIER.start()
    server_final = exchange.final(client.final(exchange.first(client.first())))
    client.verify(server_final)


def test_scram_server_with_libpq_empty_user_name() -> None:
    # libpq sends an empty user name (the startup packet has it); scramp refuses to, so compute by hand.
    with pytest.raises(ScramException):
        ScramClient([SCRAM], "", PASSWORD)
    exchange, server_first = _started()
    assert server_first.startswith(b"r=fyko+d2lbbFgONRv9qkxdawL")
    client_final, expected_server_final = _client_final(PASSWORD, "n=,r=fyko+d2lbbFgONRv9qkxdawL", server_first)
    assert exchange.final(client_final.encode()) == expected_server_final.encode()


def test_scram_server_accepts_y_flag_with_matching_binding() -> None:
    # 'y': the client could bind but believes the server cannot; c= must then be base64("y,,").
    exchange = VERIFIER.start()
    server_first = exchange.first(b"y,,n=,r=abc")
    client_final, expected = _client_final(PASSWORD, "n=,r=abc", server_first, gs2_header="y,,")
    assert client_final.startswith("c=eSws,")
    assert exchange.final(client_final.encode()) == expected.encode()


def test_scram_server_nonces_are_fresh() -> None:
    assert _started()[1] != _started()[1]


def test_scram_wrong_password() -> None:
    client = ScramClient([SCRAM], "alice", "not the password")
    exchange = VERIFIER.start()
    client.set_server_first(exchange.first(client.get_client_first().encode()).decode())
    with pytest.raises(AuthError, match="wrong password"):
        exchange.final(client.get_client_final().encode())


def test_scram_wrong_password_by_hand() -> None:
    exchange, server_first = _started()
    client_final, _ = _client_final("guess", "n=,r=fyko+d2lbbFgONRv9qkxdawL", server_first)
    with pytest.raises(AuthError):
        exchange.final(client_final.encode())


def test_scram_tampered_nonce() -> None:
    exchange, server_first = _started()
    client_final, _ = _client_final(PASSWORD, "n=,r=fyko+d2lbbFgONRv9qkxdawL", server_first)
    nonce = _attributes(server_first)["r"]
    with pytest.raises(AuthError, match="nonce"):
        exchange.final(client_final.replace(nonce, nonce[:-1] + ("A" if nonce[-1] != "A" else "B")).encode())
    with pytest.raises(AuthError, match="nonce"):
        exchange.final(client_final.replace(nonce, "fyko+d2lbbFgONRv9qkxdawL").encode())  # client part only


def test_scram_proof_computed_for_another_server_first_is_refused() -> None:
    # A replayed exchange: the proof signs the server-first of an earlier session, with its nonce.
    _, old_first = _started()
    replayed, _ = _client_final(PASSWORD, "n=,r=fyko+d2lbbFgONRv9qkxdawL", old_first)
    exchange, _ = _started()
    with pytest.raises(AuthError):
        exchange.final(replayed.encode())


@pytest.mark.parametrize("gs2_header", ["p=tls-server-end-point,,", "p=tls-unique,,"])
def test_scram_channel_binding_is_refused(gs2_header: str) -> None:
    with pytest.raises(AuthError, match="channel binding"):
        VERIFIER.start().first(f"{gs2_header}n=,r=abc".encode())


def test_scram_binding_flag_mismatch_in_client_final() -> None:
    exchange = VERIFIER.start()
    server_first = exchange.first(b"y,,n=,r=abc")
    client_final, _ = _client_final(PASSWORD, "n=,r=abc", server_first, gs2_header="n,,")  # c=biws
    with pytest.raises(AuthError, match="channel binding"):
        exchange.final(client_final.encode())


@pytest.mark.parametrize(
    "client_first",
    [
        b"",
        b"n",
        b"n,,",
        b"n,,n=",
        b"n,,r=",
        b"n,,n=,r=",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",  # an authorization identity
        b"n,,n=,r=abc,=oops",
        b"n,,n=,r=abc,long=x",
        b"n,,nr",
        b"n,,n=\xff,r=abc",
        b"\x80\x81",
        b"SCRAM-SHA-256",
    ],
)
def test_scram_client_first_garbage(client_first: bytes) -> None:
    with pytest.raises(AuthError):
        VERIFIER.start().first(client_first)


def _valid_final() -> tuple[ScramServerExchange, str]:
    exchange, server_first = _started()
    return exchange, _client_final(PASSWORD, "n=,r=fyko+d2lbbFgONRv9qkxdawL", server_first)[0]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda final: "",
        lambda final: final.partition(",p=")[0],  # no proof
        lambda final: final.partition(",p=")[0] + ",p=",  # empty proof
        lambda final: final.partition(",p=")[0] + ",p=!!!notbase64",
        lambda final: final.partition(",p=")[0] + ",p=" + _b64(b"short"),
        lambda final: final.partition(",p=")[0] + ",p=" + _b64(bytes(32)),
        lambda final: final + ",x=trailing",
        lambda final: final.replace("c=biws", "c=eSws"),
        lambda final: final.replace("c=biws,", ""),
        lambda final: final.replace("c=biws", "c="),
        lambda final: final.replace("c=", "cc="),
        lambda final: final.replace("p=", "p=\u00e9"),
        lambda final: "\udcff",
    ],
)
def test_scram_client_final_garbage(mangle: Callable[[str], str]) -> None:
    exchange, final = _valid_final()
    raw = mangle(final).encode("utf-8", "surrogateescape")
    with pytest.raises(AuthError):
        exchange.final(raw)


def test_scram_final_before_first() -> None:
    with pytest.raises(AuthError):
        VERIFIER.start().final(b"c=,r=,p=" + _b64(bytes(32)).encode())


@given(st.binary(max_size=80))
def test_scram_client_first_random_bytes_raise_only_auth_error(client_first: bytes) -> None:
    with contextlib.suppress(AuthError):
        VERIFIER.start().first(client_first)


@given(st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode)))
def test_scram_client_final_random_bytes_raise_only_auth_error(client_final: bytes) -> None:
    exchange, _ = _started()
    with pytest.raises(AuthError):
        exchange.final(client_final)


# --- the SCRAM client side (router -> server) ----------------------------------------------------------


def test_scram_client_needs_scram_sha_256() -> None:
    with pytest.raises(AuthError, match="none of which"):
        ScramClientExchange(["SCRAM-SHA-256-PLUS"], "alice", PASSWORD)


@pytest.mark.parametrize("server_first", [b"", b"garbage", b"r=abc", b"\xff\xfe", b"r=x,s=!!!,i=4096"])
def test_scram_client_server_first_garbage(server_first: bytes) -> None:
    client = ScramClientExchange([SCRAM], "alice", PASSWORD)
    client.first()
    with pytest.raises(AuthError):
        client.final(server_first)


def test_scram_client_refuses_a_forged_server_signature() -> None:
    client = ScramClientExchange([SCRAM], "alice", PASSWORD)
    exchange = VERIFIER.start()
    exchange.final(client.final(exchange.first(client.first())))
    for forged in (b"v=" + _b64(bytes(32)).encode(), b"e=invalid-proof", b"\xff"):
        with pytest.raises(AuthError):
            client.verify(forged)


def test_scram_client_detects_an_impostor_server() -> None:
    # A server that does not know the password cannot produce the signature.
    client = ScramClientExchange([SCRAM], "alice", PASSWORD)
    impostor = ScramVerifier("other password", salt=VERIFIER.salt).start()
    client_final = client.final(impostor.first(client.first()))
    with pytest.raises(AuthError):
        impostor.final(client_final)
