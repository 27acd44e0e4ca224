"""ThreadedHash: the same digest inline or on a helper, and helpers only with cores to spare."""

from __future__ import annotations

import hashlib
import os

import pytest

from dfarchive.plumbing import threadhash
from dfarchive.plumbing.threadhash import ThreadedHash

# small pieces (hashed inline even with a helper), large ones, and a zero-length one
PIECES = [os.urandom(n) for n in (10, 1 << 20, 0, 100_000, (1 << 16) - 1, 3 << 20)]


@pytest.mark.parametrize("threaded", [True, False], ids=["helper", "inline"])
def test_pieces_are_hashed_in_order_either_way(threaded):
    with ThreadedHash("sha256", threaded=threaded) as hashed:
        tickets = [hashed.submit(piece) for piece in PIECES]
        ThreadedHash.wait(tickets[-1])
        assert hashed.hexdigest() == hashlib.sha256(b"".join(PIECES)).hexdigest()
    assert (tickets[1] is not None) is threaded  # a large piece went to the helper


@pytest.mark.parametrize(("cores", "helpers"), [(1, False), (2, False), (3, True), (16, True)])
def test_helpers_by_default_only_with_cores_to_spare(monkeypatch, cores, helpers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert threadhash.helpers_pay() is helpers
    with ThreadedHash("sha1") as hashed:
        ticket = hashed.submit(PIECES[1])
        assert (ticket is not None) is helpers
        assert hashed.digest() == hashlib.sha1(PIECES[1]).digest()
