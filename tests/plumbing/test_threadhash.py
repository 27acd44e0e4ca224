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


@pytest.mark.parametrize(
    ("cores", "cpu_max", "helpers"),
    [
        (1, None, False),
        (2, None, False),
        (3, None, True),
        (16, None, True),
        (16, "max 100000\n", True),  # cgroup v2 without a limit
        (16, "200000 100000\n", False),  # a container with --cpus 2
        (16, "250000 100000\n", True),  # --cpus 2.5: a third core part of the time
        (2, "800000 100000\n", False),  # the affinity is the smaller
    ],
)
def test_helpers_by_default_only_with_cores_to_spare(
    monkeypatch, tmp_path, cores, cpu_max, helpers
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    cgroup = tmp_path / "cpu.max"  # absent: no cgroup v2
    if cpu_max is not None:
        cgroup.write_text(cpu_max)
    monkeypatch.setattr(threadhash, "CGROUP_CPU_MAX", cgroup)
    assert threadhash.helpers_pay() is helpers
    with ThreadedHash("sha1") as hashed:
        ticket = hashed.submit(PIECES[1])
        assert (ticket is not None) is helpers
        assert hashed.digest() == hashlib.sha1(PIECES[1]).digest()


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("max 100000", None),
        ("100000 100000", 1),
        ("150000 100000", 2),
        ("50000 100000", 1),
        ("", None),
        ("1 0", None),
        ("x 100000", None),
    ],
)
def test_quota_cores_reads_cgroup_v2_cpu_max(text, cores):
    assert threadhash.quota_cores(text) == cores
