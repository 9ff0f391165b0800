"""The ObjectStore contract, run against the local directory and against the S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fragua.storage.store import NotFound, PreconditionFailed, StoreError


def test_create_only_writes(store):
    etag = store.put_bytes("a/k.json", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("a/k.json", b"2", if_none_match=True)
    assert store.get_bytes("a/k.json") == (b"1", etag)


def test_compare_and_swap(store):
    first = store.put_bytes("k.json", b"1")
    with pytest.raises(PreconditionFailed):
        store.put_bytes("k.json", b"2", if_match="0123456789abcdef0123456789abcdef")
    second = store.put_bytes("k.json", b"2", if_match=first)
    assert second != first and store.get_bytes("k.json") == (b"2", second)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("k.json", b"3", if_match=first)  # stale ETag
    with pytest.raises(PreconditionFailed):
        store.put_bytes("missing.json", b"3", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.delete_if_match("k.json", first)
    store.delete_if_match("k.json", second)
    assert not store.exists("k.json")


def test_missing_objects(store, tmp_path):
    with pytest.raises(NotFound):
        store.get_bytes("nothing/here.json")
    with pytest.raises(NotFound):
        store.get_file("nothing/here.bin", tmp_path / "x")
    with pytest.raises(NotFound):
        store.size("nothing/here.bin")
    assert not store.exists("nothing/here.json")
    store.delete("nothing/here.json")  # absent is not an error


def test_files_round_trip_with_progress(store, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024 + 123))  # above the S3 test multipart threshold
    small = tmp_path / "small.txt"
    small.write_text("small")
    moved: list[int] = []
    store.put_files([("v/big.bin", big), ("v/sub/small.txt", small)], moved.append)
    assert sum(moved) == big.stat().st_size + 5
    assert store.size("v/big.bin") == big.stat().st_size
    back: list[int] = []
    store.get_files([("v/big.bin", tmp_path / "out" / "big.bin"), ("v/sub/small.txt", tmp_path / "out" / "sub" / "small.txt")], back.append)
    assert (tmp_path / "out" / "big.bin").read_bytes() == big.read_bytes()
    assert (tmp_path / "out" / "sub" / "small.txt").read_text() == "small"
    assert sum(back) == sum(moved)


def test_listing_keys_and_children(store, tmp_path):
    for key in ("m/versions/a-v1/x", "m/versions/a-v1/sub/y", "m/versions/a-v2/x", "m/versions2/z", "m/aliases/p.json"):
        store.put_bytes(key, b".")
    assert store.list_keys("m/versions/") == ["m/versions/a-v1/sub/y", "m/versions/a-v1/x", "m/versions/a-v2/x"]
    assert store.list_keys("m/versions/a-v1/") == ["m/versions/a-v1/sub/y", "m/versions/a-v1/x"]
    assert store.list_children("m/versions/") == ["a-v1", "a-v2"]
    assert store.list_keys("nothing/") == [] and store.list_children("nothing/") == []
    store.delete_many(store.list_keys("m/versions/a-v1/"))
    assert store.list_children("m/versions/") == ["a-v2"]


@pytest.mark.parametrize("key", ["../outside", "a/../../b", "/abs/key", "a/./b", "bad\x00key", "tab\tkey", "new\nline", ""])
def test_escaping_keys_are_rejected_before_any_request(store, key, tmp_path):
    with pytest.raises(StoreError, match="invalid storage key"):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreError, match="invalid storage key"):
        store.get_bytes(key)
    with pytest.raises(StoreError, match="invalid storage key"):
        store.put_file(key, Path(__file__))
    with pytest.raises(StoreError, match="invalid storage key"):
        store.delete(key)
