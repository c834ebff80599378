"""The ranker's cache of users' online features, so that a user's next requests skip the Feast read.

A user's online row changes when recommend pushes their recomputed features after a rating (after appending
the rating to the event log, so the ranker can see the event before the push lands) and when features are
materialized (the ranker then rebuilds its whole state, and with it a new cache). So:

- a rating event for a user (the ranker follows the ratings stream) evicts the user and keeps them uncached
  for ``settle_s``: reads in that time go to Feast and are not kept, so a read that raced the push is never
  kept;
- every entry expires after ``ttl_s`` anyway, which bounds how stale a row can be if a push was retried later
  (recommend retries failed pushes) or written by something the ranker does not follow;
- at most ``max_users`` entries; the oldest go first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

UserRow = tuple[dict[str, object], bool]  # the features (None = null) and whether the store knows the user


class UserFeatureCache:
    def __init__(
        self,
        read: Callable[[int], UserRow],
        ttl_s: float,
        settle_s: float,
        max_users: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self.max_users = max_users
        self._clock = clock
        self._rows: OrderedDict[int, tuple[float, UserRow]] = OrderedDict()  # user -> (read at, row)
        self._unsettled: dict[int, float] = {}  # user -> uncached until
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, user_id: int) -> UserRow:
        now = self._clock()
        with self._lock:
            entry = self._rows.get(user_id)
            if entry is not None and now - entry[0] < self.ttl_s:
                self.hits += 1
                return entry[1]
        row = self._read(user_id)  # outside the lock: a slow read does not hold up other users
        with self._lock:
            self.misses += 1
            if self.max_users > 0 and self._unsettled.get(user_id, 0.0) <= now:
                self._unsettled.pop(user_id, None)
                self._rows[user_id] = (now, row)
                self._rows.move_to_end(user_id)
                while len(self._rows) > self.max_users:
                    self._rows.popitem(last=False)
        return row

    def rated(self, user_ids: Iterable[int]) -> None:
        """Users whose features are being recomputed (a rating event): evict them and let them settle."""
        until = self._clock() + self.settle_s
        with self._lock:
            for user_id in user_ids:
                self._rows.pop(user_id, None)
                self._unsettled[user_id] = until
            if len(self._unsettled) > self.max_users:  # a burst of raters: drop the settled ones
                now = self._clock()
                self._unsettled = {user: t for user, t in self._unsettled.items() if t > now}
