"""Closed JSON pages of /ohlcv and /indicators kept in the API process, each with the fingerprint of the
mart rows it was built from, so a page asked for again costs one small query instead of rendering 1,440
rows x 12 values in Postgres (bench figure 12: that rendering was the API's CPU limit).

The fingerprint of a page is (rows, sum of a hash of each row's xmin) over exactly the rows of the page
query (the extra row that says there is a next page included). Any change to a row of a mart table
writes a new row version with the writing transaction's xmin; a backfilled candle adds a row, a dropped
month removes some; a full refresh rewrites them all. Each of those changes the fingerprint, so the page
is built fresh (a false change, e.g. a rewrite with the same values, only costs a rebuild). The body's
other input, ``now()`` in ohlcv_1m's is_closed, only turns false into true: only pages whose rows are all
closed are kept.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

# The sum of the row versions' hashes over a page's rows: a column ``row_version`` (the table's xmin).
FINGERPRINT_SQL = "count(*), coalesce(sum(hashtextextended(row_version::text, 0)), 0)"
GZIP_MIN_BYTES = 1024  # as Airflow's API server's GZipMiddleware: smaller bodies go out as they are
GZIP_LEVEL = 5  # Airflow's level: ~6x smaller for a day of 1m candles


@dataclass
class Page:
    fingerprint: tuple[int, int]
    body: bytes
    _gzipped: bytes | None = field(default=None, repr=False)

    def gzipped(self) -> bytes:
        """The body gzip-compressed, computed once: Airflow's GZipMiddleware passes an encoded body through,
        where it would otherwise compress ~350 kB on every request."""
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzipped

    @property
    def size(self) -> int:
        return len(self.body) + len(self._gzipped or b"")


class PageCache:
    """Least recently used pages up to ``max_bytes`` (0: nothing is kept). One per API process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pages: OrderedDict[Hashable, Page] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: Hashable, fingerprint: tuple[int, int]) -> Page | None:
        page = self._pages.get(key)
        if page is None or page.fingerprint != fingerprint:
            self.misses += 1
            return None
        self._pages.move_to_end(key)
        self.hits += 1
        return page

    def put(self, key: Hashable, page: Page) -> None:
        if page.size * 4 > self.max_bytes:  # one page never takes over the cache
            return
        self._pages.pop(key, None)
        self._pages[key] = page
        self._shrink()

    def gzipped(self, page: Page) -> bytes:
        """The page's gzipped body; the first time, the cache makes room for it."""
        fresh = page._gzipped is None
        body = page.gzipped()
        if fresh:
            self._shrink()
        return body

    def _shrink(self) -> None:
        while self._pages and sum(p.size for p in self._pages.values()) > self.max_bytes:
            self._pages.popitem(last=False)
