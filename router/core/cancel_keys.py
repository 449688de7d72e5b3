"""Cancel keys: which router instance and which worker process owns a client, written into the
BackendKeyData process id the router hands out.

A CancelRequest arrives on a new connection, at whichever worker the kernel picks (SO_REUSEPORT)
and possibly at another router instance behind the same load balancer. The owner is read back from
the key, and the request forwarded to it, as PgBouncer's peers do. Pure: no I/O.

Layout of the 31-bit positive process id: bits 0-5 worker index (64 workers), bits 6-13 peer id
(256 instances), bits 14-30 random.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

WORKER_BITS = 6
PEER_BITS = 8
MAX_WORKERS = 1 << WORKER_BITS
MAX_PEERS = 1 << PEER_BITS
_RANDOM_BITS = 31 - WORKER_BITS - PEER_BITS


@dataclass(frozen=True, slots=True)
class KeyOwner:
    peer_id: int
    worker: int


def new_process_id(peer_id: int, worker: int) -> int:
    """A fresh process id owned by (peer_id, worker); never 0."""
    if not 0 <= worker < MAX_WORKERS or not 0 <= peer_id < MAX_PEERS:
        raise ValueError(f"worker {worker} / peer {peer_id} out of range")
    random_part = secrets.randbelow((1 << _RANDOM_BITS) - 1) + 1
    return (random_part << (WORKER_BITS + PEER_BITS)) | (peer_id << WORKER_BITS) | worker


def owner_of(process_id: int) -> KeyOwner:
    return KeyOwner(peer_id=(process_id >> WORKER_BITS) & (MAX_PEERS - 1), worker=process_id & (MAX_WORKERS - 1))
