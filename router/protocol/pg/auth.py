"""Authentication math for both sides: SCRAM-SHA-256 (via scramp) and md5.

Sans-IO: these objects take and return the payloads of authentication messages. The client side
(router -> server) and the server side (client -> router) each get one small class.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from scramp import ScramClient, ScramException

# Defined with the router's other errors; raised here, caught by the adapters that import it from here.
from router.errors import AuthError as AuthError

SCRAM = "SCRAM-SHA-256"


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The payload of a PasswordMessage answering AuthenticationMD5Password."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode() + b"\x00"


def check_md5(user: str, password: str, salt: bytes, answer: bytes) -> bool:
    return hmac.compare_digest(md5_password(user, password, salt).rstrip(b"\x00"), answer.rstrip(b"\x00"))


def new_md5_salt() -> bytes:
    return secrets.token_bytes(4)


class ScramVerifier:
    """A user's stored SCRAM-SHA-256 credentials (RFC 5802/7677), computed once: PBKDF2 is
    deliberately slow. (scramp, used for the client side, refuses the empty user name that libpq
    sends, so the server side is these few lines of RFC math.)"""

    ITERATIONS = 4096

    def __init__(self, password: str, salt: bytes | None = None) -> None:
        self.salt = salt if salt is not None else secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, self.ITERATIONS)
        self.stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
        self.server_key = _hmac(salted, b"Server Key")

    def start(self) -> ScramServerExchange:
        return ScramServerExchange(self)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _attributes(message: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for part in message.split(","):
        name, sep, value = part.partition("=")
        if not sep or len(name) != 1:
            raise AuthError(f"malformed SCRAM attribute {part!r}")
        attributes.setdefault(name, value)
    return attributes


class ScramServerExchange:
    """The router authenticating one client."""

    def __init__(self, verifier: ScramVerifier) -> None:
        self._verifier = verifier
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._gs2_header = ""

    def first(self, client_first: bytes) -> bytes:
        try:
            text = client_first.decode()
        except UnicodeDecodeError as exc:
            raise AuthError("SCRAM message is not UTF-8") from exc
        flag, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if flag.startswith("p="):
            raise AuthError("SCRAM channel binding is not supported (the router does not offer TLS yet)")
        if flag not in ("n", "y") or authzid:
            raise AuthError("malformed SCRAM client-first message")
        client_nonce = _attributes(bare).get("r")
        if not client_nonce:
            raise AuthError("SCRAM client-first message has no nonce")
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self._verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._verifier.ITERATIONS}"
        return self._server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        try:
            text = client_final.decode()
        except UnicodeDecodeError as exc:
            raise AuthError("SCRAM message is not UTF-8") from exc
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise AuthError("SCRAM client-final message has no proof")
        attributes = _attributes(without_proof)
        if attributes.get("r") != self._nonce:
            raise AuthError("SCRAM nonce mismatch")
        if attributes.get("c") != base64.b64encode(self._gs2_header.encode()).decode():
            raise AuthError("SCRAM channel binding mismatch")
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError as exc:
            raise AuthError("SCRAM proof is not base64") from exc
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self._verifier.stored_key, auth_message)
        if len(proof) != len(signature):
            raise AuthError("SCRAM proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._verifier.stored_key):
            raise AuthError("wrong password")
        return ("v=" + base64.b64encode(_hmac(self._verifier.server_key, auth_message)).decode()).encode()


class ScramClientExchange:
    """The router authenticating itself to a server."""

    def __init__(self, mechanisms: list[str], user: str, password: str) -> None:
        if SCRAM not in mechanisms:
            raise AuthError(f"server offers SASL mechanisms {mechanisms}, none of which the router supports")
        self._client = ScramClient([SCRAM], user, password)

    def first(self) -> bytes:
        return str(self._client.get_client_first()).encode()

    def final(self, server_first: bytes) -> bytes:
        try:
            self._client.set_server_first(server_first.decode())
            return str(self._client.get_client_final()).encode()
        except (ScramException, UnicodeDecodeError) as exc:
            raise AuthError(str(exc)) from exc

    def verify(self, server_final: bytes) -> None:
        try:
            self._client.set_server_final(server_final.decode())
        except (ScramException, UnicodeDecodeError) as exc:
            raise AuthError(f"server signature invalid: {exc}") from exc


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password`: given to CREATE/ALTER ROLE
    instead of the password, so the password itself never reaches the server or its logs."""
    verifier = ScramVerifier(password, salt)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return (
        f"SCRAM-SHA-256${verifier.ITERATIONS}:{b64(verifier.salt)}"
        f"${b64(verifier.stored_key)}:{b64(verifier.server_key)}"
    )
