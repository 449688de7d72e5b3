"""The owner written into a cancel key is read back exactly, for every worker and peer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.cancel_keys import MAX_PEERS, MAX_WORKERS, new_process_id, owner_of


@given(st.integers(0, MAX_PEERS - 1), st.integers(0, MAX_WORKERS - 1))
def test_owner_round_trips(peer: int, worker: int) -> None:
    pid = new_process_id(peer, worker)
    assert 0 < pid < 2**31
    owner = owner_of(pid)
    assert (owner.peer_id, owner.worker) == (peer, worker)


def test_keys_are_random() -> None:
    assert len({new_process_id(3, 1) for _ in range(1000)}) > 990


@pytest.mark.parametrize(("peer", "worker"), [(-1, 0), (256, 0), (0, 64), (0, -1)])
def test_out_of_range_owner_is_refused(peer: int, worker: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        new_process_id(peer, worker)


def test_golden_layout() -> None:
    # Pinned: peers that run different versions must agree on where the owner lives.
    assert owner_of(0b101_00000011_000010) == owner_of((5 << 14) | (3 << 6) | 2)
    assert owner_of((5 << 14) | (3 << 6) | 2).peer_id == 3
    assert owner_of((5 << 14) | (3 << 6) | 2).worker == 2
