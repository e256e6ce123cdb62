"""The decode pool survives a codec crash: one item fails, the pool is rebuilt, the rest decode."""

from __future__ import annotations

import os

from pydicom.data import get_testdata_file

from dicom_node.errors import DecodeError
from dicom_node.pixels.decode import decode_instance
from dicom_node.pixels.pool import DecodePool


def crash_or_decode(path: str) -> int:
    """Worker task: abort the process (as a segfaulting codec would) for the poisoned item."""
    if path == "POISON":
        os.abort()
    return int(decode_instance(path).sum())


def test_crash_fails_one_item_and_pool_recovers() -> None:
    good = get_testdata_file("MR_small_RLE.dcm")
    expected = int(decode_instance(good).sum())
    items = [good, good, "POISON", good, good]
    with DecodePool(2) as pool:
        results = dict(pool.imap(crash_or_decode, items))
        assert pool.rebuilds >= 1
        # The pool still works after the crash.
        assert dict(pool.imap(crash_or_decode, [good])) == {0: expected}
    assert isinstance(results[2], DecodeError) and "crashed on POISON" in str(results[2])
    assert [results[i] for i in (0, 1, 3, 4)] == [expected] * 4


def test_decode_errors_come_back_as_values() -> None:
    with DecodePool(1) as pool:
        (idx, result), = list(pool.imap(crash_or_decode, [get_testdata_file("MR_truncated.dcm")]))
    assert idx == 0 and isinstance(result, DecodeError)
    assert pool.rebuilds == 0
