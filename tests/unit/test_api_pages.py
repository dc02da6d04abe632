"""The API's kept pages (marketflow.api.pages): a page is served only for the fingerprint it was built
from, the cache stays within its bytes, and the gzipped body inflates to the page (checked with zlib, not
the module's own gzip call)."""

from __future__ import annotations

import zlib

from marketflow.api.pages import Page, PageCache


def test_a_page_is_served_only_for_its_fingerprint() -> None:
    cache = PageCache(1 << 20)
    cache.put("day", Page((1441, 42), b'{"candles": []}'))
    assert cache.get("day", (1441, 42)).body == b'{"candles": []}'
    assert cache.get("day", (1441, 43)) is None  # a row rewritten: another xmin
    assert cache.get("day", (1440, 42)) is None  # a row gone or one more
    assert cache.get("other day", (1441, 42)) is None
    assert (cache.hits, cache.misses) == (1, 3)


def test_the_least_recently_used_pages_go_first_and_big_pages_are_not_kept() -> None:
    cache = PageCache(1000)
    for name in "abcd":
        cache.put(name, Page((1, 1), b"x" * 240))
    assert cache.get("a", (1, 1)) is not None  # a used again: b is now the oldest
    cache.put("e", Page((1, 1), b"x" * 240))
    assert [k for k in "abcde" if cache.get(k, (1, 1))] == ["a", "c", "d", "e"]
    cache.put("huge", Page((1, 1), b"x" * 251))  # over a quarter of the cache
    assert cache.get("huge", (1, 1)) is None
    assert not PageCache(0).enabled


def test_the_gzipped_body_inflates_to_the_page() -> None:
    body = b'{"candles": [' + b'{"open": "1.00000001"},' * 1000 + b'{}]}'
    page = Page((1, 1), body)
    packed = page.gzipped()
    assert zlib.decompress(packed, wbits=31) == body and len(packed) < len(body) // 10
    assert page.gzipped() is packed and page.size == len(body) + len(packed)  # compressed once
