"""TarHeaderWalker: incremental tar header walking, against archives from tarfile and GNU tar."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfarchive.archiving.tarheaders import BLOCK, TarHeaderWalker, TarSummary
from dfarchive.errors import ValidationError
from tests.support.gpg import tar_by_hand


def names_digest(names: list[bytes]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name + b"\x00")
    return digest.hexdigest()


def index_of(data: bytes, chunk_sizes: list[int] | None = None) -> TarSummary:
    index = TarHeaderWalker()
    pos = 0
    sizes = iter(chunk_sizes or [])
    while pos < len(data):
        step = next(sizes, len(data)) or 1
        index.feed(data[pos : pos + step])
        pos += step
    return index.summary()


# Names: path segments with spaces, quotes and non-ASCII, some long enough to need
# GNU long-name / pax headers (> 100 bytes).
segment = st.text(alphabet=st.sampled_from("abcXYZ019 _-.'\"éü日"), min_size=1, max_size=40).filter(
    lambda s: s not in (".", "..")
)
member = st.tuples(
    st.lists(segment, min_size=1, max_size=5).map("/".join),
    st.sampled_from(["file", "dir", "symlink", "hardlink"]),
    st.integers(min_value=0, max_value=3000),
)


def build_archive(members: list[tuple[str, str, int]], fmt: int) -> tuple[bytes, list[bytes]]:
    """A tar archive made by tarfile, and the raw member names it holds, in order."""
    out = io.BytesIO()
    names = []
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8") as tar:
        for i, (name, kind, size) in enumerate(members):
            name = f"{i}/{name}"  # unique
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                names.append(name.encode() + b"/")  # tarfile writes dirs with a slash
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = "target/" * (size // 20) + str(i)  # long: 'K' / pax
                tar.addfile(info)
                names.append(name.encode())
            else:
                info.size = size
                tar.addfile(info, io.BytesIO(bytes([i % 256]) * size))
                names.append(name.encode())
    return out.getvalue(), names


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.lists(member, max_size=12),
    fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    chunks=st.lists(st.integers(min_value=1, max_value=3 * BLOCK), max_size=200),
)
def test_matches_tarfile_archives_at_any_chunk_boundaries(members, fmt, chunks):
    data, names = build_archive(members, fmt)
    whole = index_of(data)
    assert whole == TarSummary(
        members=len(names),
        members_sha256=names_digest(names),
        end_of_archive=True,
        size=len(data),
    )
    assert index_of(data, chunks) == whole
    index = TarHeaderWalker()
    index.feed(data)
    assert index.archived_names == content_names(data)
    assert index.other_names == other_names(data)


def tarfile_members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tar:
        return tar.getmembers()


def raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def content_names(data: bytes) -> set[bytes]:
    """Names of the directory and regular-file members, as tarfile reads them."""
    return {raw(m.name) for m in tarfile_members(data) if m.isdir() or m.isreg()}


def other_names(data: bytes) -> set[bytes]:
    """Names of the other members and of hard links' targets, as tarfile reads them."""
    members = tarfile_members(data)
    return {raw(m.name) for m in members if not (m.isdir() or m.isreg())} | {
        raw(m.linkname) for m in members if m.islnk()
    }


def test_ustar_prefix_field_is_part_of_the_name():
    name = "p" * 90 + "/" + "n" * 90  # fits ustar only by splitting into prefix + name
    data, names = build_archive([(name, "file", 5)], tarfile.USTAR_FORMAT)
    assert index_of(data).members_sha256 == names_digest(names)


@pytest.mark.parametrize("step", [1, 100, 511, 512, 513, 10240, 1 << 20])
def test_gnu_tar_stream_of_a_run_folder(run_folder, step):
    spec = run_folder(small_files=60, big_files=1, big_size=100_000)
    stream = tar_by_hand(spec.path)
    listed = subprocess.run(
        ["tar", "--quoting-style=literal", "-tf", "-"],
        input=stream,
        capture_output=True,
        check=True,
    ).stdout.splitlines()
    summary = index_of(stream, [step] * (len(stream) // step + 1))
    assert summary == TarSummary(
        members=len(listed),
        members_sha256=names_digest(listed),
        end_of_archive=True,
        size=len(stream),
    )
    assert any(len(name) > 100 for name in listed)  # GNU 'L' headers were exercised
    index = TarHeaderWalker()
    index.feed(stream)
    assert index.archived_names == content_names(stream)
    assert f"{spec.path.name}/RunInfo.xml".encode() in index.archived_names
    assert index.other_names == other_names(stream)
    run = spec.path.name
    assert {f"{run}/link_long_target", f"{run}/RunInfo.xml"} <= {
        os.fsdecode(name) for name in index.other_names
    }  # a symlink; a hard link's target (and a regular file)


def test_links_fifos_and_hard_link_targets_are_the_other_names(tmp_path):
    run = tmp_path / "run"
    (run / ("d" * 120)).mkdir(parents=True)
    first = run / ("d" * 120) / ("first" * 30)  # both names need GNU 'L' / 'K' headers
    first.write_text("linked\n")
    os.link(first, run / ("second" * 30))
    os.symlink("/etc/passwd", run / "symlink")
    os.mkfifo(run / "fifo")
    stream = tar_by_hand(run)
    index = TarHeaderWalker()
    index.feed(stream)
    linked = {b"run/" + b"second" * 30, b"run/" + b"d" * 120 + b"/" + b"first" * 30}
    # whichever tar met first is a regular file, the other a hard link to it
    assert len(linked & index.archived_names) == 1
    assert index.other_names == linked | {b"run/symlink", b"run/fifo"}  # not "/etc/passwd"
    assert index.other_names == other_names(stream)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_a_hard_link_target_is_read_from_every_header_kind(fmt):
    target = "run/" + "t" * (200 if fmt != tarfile.USTAR_FORMAT else 90)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("run/link")
        info.type = tarfile.LNKTYPE
        info.linkname = target
        tar.addfile(info)
        info = tarfile.TarInfo("run/next")  # the long link name must not stick to it
        info.type = tarfile.SYMTYPE
        info.linkname = "elsewhere"
        tar.addfile(info)
    index = TarHeaderWalker()
    index.feed(out.getvalue())
    assert index.other_names == {b"run/link", target.encode(), b"run/next"}


def test_base256_size_of_a_huge_member_is_skipped_by_arithmetic():
    size = 9 << 30  # beyond the 8 GiB octal limit: GNU base-256
    info = tarfile.TarInfo("run/huge.bin")
    info.size = size
    header = info.tobuf(tarfile.GNU_FORMAT)
    assert header[124] & 0x80  # really base-256
    index = TarHeaderWalker()
    index.feed(header)
    zeros = memoryview(bytes(64 << 20))
    left = size
    while left:
        step = min(left, len(zeros))
        index.feed(zeros[:step])
        left -= step
    index.feed(bytes(2 * BLOCK))
    summary = index.summary()
    assert summary.members == 1
    assert summary.end_of_archive
    assert summary.size == len(header) + size + 2 * BLOCK
    assert summary.members_sha256 == names_digest([b"run/huge.bin"])


def test_truncated_stream_has_no_end_of_archive():
    data, _ = build_archive([("a", "file", 2000), ("b", "file", 10)], tarfile.GNU_FORMAT)
    cut = index_of(data[:1500])
    assert not cut.end_of_archive
    assert cut.members == 1
    one_zero_block = index_of(data[: data.index(bytes(2 * BLOCK)) + BLOCK])
    assert not one_zero_block.end_of_archive


def test_corrupt_header_checksum_is_a_validation_error():
    data = bytearray(build_archive([("a/b", "file", 700), ("c", "file", 1)], tarfile.GNU_FORMAT)[0])
    second_header = BLOCK + 1024  # header, 700 bytes padded to 1024, next header
    data[second_header + 5] ^= 0x01
    with pytest.raises(ValidationError, match=f"offset {second_header}: checksum mismatch"):
        index_of(bytes(data), [7] * len(data))


def test_unreadable_size_field_is_a_validation_error():
    data = bytearray(build_archive([("a", "file", 1)], tarfile.GNU_FORMAT)[0])
    data[124:136] = b"zzzzzzzzzzz\x00"
    checksum = sum(data[:148]) + 8 * 0x20 + sum(data[156:BLOCK])
    data[148:156] = b"%06o\x00 " % checksum
    with pytest.raises(ValidationError, match="unreadable size field"):
        index_of(bytes(data))


def test_bytes_after_end_of_archive_are_counted_not_parsed():
    data, _ = build_archive([("a", "file", 3)], tarfile.GNU_FORMAT)
    summary = index_of(data + b"garbage that is not a header" * 50)
    assert summary.members == 1
    assert summary.end_of_archive
    assert summary.size == len(data) + 28 * 50


def raw_header(name: bytes, size: int, typeflag: bytes, extra: dict[int, bytes]) -> bytes:
    """A GNU header block built by hand (for types tarfile does not write)."""
    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\x00"
    block[124:136] = b"%011o\x00" % size
    block[156:157] = typeflag
    block[257:265] = b"ustar  \x00"
    for offset, value in extra.items():
        block[offset : offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def test_gnu_old_sparse_extension_blocks_precede_the_data():
    sparse = raw_header(b"run/sparse.bin", 1000, b"S", {482: b"\x01"})
    extension = bytearray(BLOCK)
    extension[504] = 1  # another extension block follows
    last_extension = bytes(BLOCK - 1) + b"\x00"
    data = b"\xff" * 1024  # 1000 bytes of stored data, padded; not a header
    after = raw_header(b"run/after.txt", 0, b"0", {})
    stream = sparse + bytes(extension) + last_extension + data + after + bytes(2 * BLOCK)
    for step in (1, 512, len(stream)):
        summary = index_of(stream, [step] * (len(stream) // step + 1))
        assert summary.members == 2
        assert summary.end_of_archive
        assert summary.members_sha256 == names_digest([b"run/sparse.bin", b"run/after.txt"])
