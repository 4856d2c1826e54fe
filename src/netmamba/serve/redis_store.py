"""The Redis results store (`--redis URL`): the paper's deployment writes its results to Redis.

Keys (all under `prefix`, "netmamba:" by default):

    flow:<id>                   the record, JSON
    t:classified, t:flow        sorted sets of ids scored by classified_at / first_ts
    label:<label>, addr:<ip>, port:<n>, proto:<n>, source:<name>, unknown:<0|1>
                                sets of ids: the filters (an address or port set holds the flows
                                where it is the source or the destination)
    agg:<time field>:<bucket>   hash of "<unknown>|<label>|flows|packets|bytes" counters per
                                10-second bucket, kept up to date on write and delete, so
                                statistics never read individual flows
    aggidx:<time field>         sorted set of the buckets that have counters

A filtered query intersects the time set with the filter sets (ZINTERSTORE, filter weights 0,
so the score stays the time) into a short-lived key and pages it newest first. Writes go in
one MULTI/EXEC per batch; replacing a flow id first removes the old record's traces.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import defaultdict
from typing import Any

from netmamba.serve.store import (
    FlowPage,
    FlowQuery,
    FlowRecord,
    LabelBucket,
    ResultStore,
    StoreError,
)

AGG_S = 10  # resolution of the statistics counters, seconds

# Decrement one label's counters in a bucket; drop them at zero, and the bucket when empty.
_DECREMENT = """
local f = ARGV[1]
local n = redis.call('HINCRBY', KEYS[1], f .. 'flows', -tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], f .. 'packets', -tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], f .. 'bytes', -tonumber(ARGV[4]))
if n <= 0 then redis.call('HDEL', KEYS[1], f .. 'flows', f .. 'packets', f .. 'bytes') end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[5]) end
return n
"""


class RedisStore(ResultStore):
    """Results in a Redis server. See the module docstring."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "netmamba:", **options: Any) -> None:
        super().__init__(**options)
        try:
            import redis
        except ImportError:
            raise StoreError(
                "the Redis store needs the redis package: pip install 'netmamba[redis]'"
            ) from None
        self.url, self.prefix = url, prefix
        try:
            self._redis = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
            )
            self._redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"cannot use Redis at {url}: {exc}") from exc
        self._redis_error = redis.RedisError
        self._decrement = self._redis.register_script(_DECREMENT)

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    # -- writing ---------------------------------------------------------------------------

    def _sets(self, r: FlowRecord) -> list[str]:
        return [
            self._k("label", r.label),
            self._k("addr", r.src_ip),
            self._k("addr", r.dst_ip),
            self._k("port", r.src_port),
            self._k("port", r.dst_port),
            self._k("proto", r.protocol),
            self._k("source", r.source),
            self._k("unknown", int(r.unknown)),
        ]

    @staticmethod
    def _times(r: FlowRecord) -> tuple[tuple[str, float], ...]:
        return (("classified", r.classified_at), ("flow", r.first_ts))

    def _index(self, pipe: Any, r: FlowRecord) -> None:
        pipe.set(self._k("flow", r.flow_id), json.dumps(r.to_dict()))
        for field, t in self._times(r):
            pipe.zadd(self._k("t", field), {r.flow_id: t})
            bucket = int(t // AGG_S) * AGG_S
            key = self._k("agg", field, bucket)
            prefix = f"{int(r.unknown)}|{r.label}|"
            pipe.hincrby(key, prefix + "flows", 1)
            pipe.hincrby(key, prefix + "packets", r.packets)
            pipe.hincrby(key, prefix + "bytes", r.bytes)
            pipe.zadd(self._k("aggidx", field), {str(bucket): bucket})
        for key in self._sets(r):
            pipe.sadd(key, r.flow_id)

    def _unindex(self, pipe: Any, r: FlowRecord) -> None:
        pipe.delete(self._k("flow", r.flow_id))
        for field, t in self._times(r):
            pipe.zrem(self._k("t", field), r.flow_id)
            bucket = int(t // AGG_S) * AGG_S
            self._decrement(
                keys=[self._k("agg", field, bucket), self._k("aggidx", field)],
                args=[f"{int(r.unknown)}|{r.label}|", 1, r.packets, r.bytes, str(bucket)],
                client=pipe,
            )
        for key in self._sets(r):
            pipe.srem(key, r.flow_id)

    def _old_records(self, ids: list[str]) -> list[FlowRecord]:
        values = self._redis.mget([self._k("flow", i) for i in ids]) if ids else []
        return [FlowRecord.from_dict(json.loads(v)) for v in values if v is not None]

    def _write(self, records: list[FlowRecord]) -> None:
        latest = {r.flow_id: r for r in records}  # the last record of an id wins
        old = self._old_records(list(latest))
        pipe = self._redis.pipeline(transaction=True)
        for r in old:
            self._unindex(pipe, r)
        for r in latest.values():
            self._index(pipe, r)
        pipe.execute()

    def retain(self, max_age_s: float | None, max_flows: int | None) -> int:
        doomed: list[str] = []
        key = self._k("t", "classified")
        if max_age_s is not None:
            doomed += self._redis.zrangebyscore(key, "-inf", f"({time.time() - max_age_s}")
        if max_flows is not None:
            excess = self._redis.zcard(key) - max_flows
            if excess > 0:
                doomed += self._redis.zrange(key, 0, excess - 1)
        doomed = list(dict.fromkeys(doomed))
        deleted = 0
        for start in range(0, len(doomed), 1000):
            old = self._old_records(doomed[start : start + 1000])
            pipe = self._redis.pipeline(transaction=True)
            for r in old:
                self._unindex(pipe, r)
            pipe.execute()
            deleted += len(old)
        return deleted

    # -- reading ---------------------------------------------------------------------------

    def query(self, q: FlowQuery) -> FlowPage:
        filters = []
        if q.label is not None:
            filters.append(self._k("label", q.label))
        if q.address is not None:
            filters.append(self._k("addr", q.address))
        if q.port is not None:
            filters.append(self._k("port", q.port))
        if q.protocol is not None:
            filters.append(self._k("proto", q.protocol))
        if q.source is not None:
            filters.append(self._k("source", q.source))
        if q.unknown is not None:
            filters.append(self._k("unknown", int(q.unknown)))
        low = "-inf" if q.since is None else repr(float(q.since))
        high = "+inf" if q.until is None else f"({float(q.until)!r}"
        key = self._k("t", q.time_field)
        temporary = None
        try:
            if filters:
                temporary = self._k("tmp", uuid.uuid4().hex)
                weights = {key: 1, **{f: 0 for f in filters}}
                pipe = self._redis.pipeline(transaction=True)
                pipe.zinterstore(temporary, weights, aggregate="SUM")
                pipe.expire(temporary, 60)  # gone even if we die before the DEL below
                pipe.execute()
                key = temporary
            total = self._redis.zcount(key, low, high)
            ids = (
                self._redis.zrevrangebyscore(key, high, low, start=q.offset, num=q.limit)
                if q.limit
                else []
            )
            values = self._redis.mget([self._k("flow", i) for i in ids]) if ids else []
        except self._redis_error as exc:
            raise StoreError(f"Redis query failed: {exc}") from exc
        finally:
            if temporary is not None:
                self._redis.delete(temporary)
        flows = [FlowRecord.from_dict(json.loads(v)) for v in values if v is not None]
        return FlowPage(total, flows)

    def stats(
        self,
        since: float,
        until: float,
        bucket_s: float,
        time_field: str = "classified",
    ) -> list[LabelBucket]:
        # Counters exist per AGG_S seconds: buckets are rounded up to a multiple of that, and
        # the first and last counters may hold flows up to AGG_S s outside [since, until).
        step = int(self.stats_resolution(bucket_s))
        first = int(since // AGG_S) * AGG_S
        try:
            buckets = self._redis.zrangebyscore(self._k("aggidx", time_field), first, f"({until}")
            pipe = self._redis.pipeline(transaction=False)
            for b in buckets:
                pipe.hgetall(self._k("agg", time_field, b))
            contents = pipe.execute()
        except self._redis_error as exc:
            raise StoreError(f"Redis statistics query failed: {exc}") from exc
        sums: dict[tuple[int, str, bool], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for b, counters in zip(buckets, contents, strict=True):
            start = int(float(b)) // step * step
            for name, value in counters.items():
                unknown, rest = name.split("|", 1)
                label, metric = rest.rsplit("|", 1)
                sums[(start, label, unknown == "1")][metric] += int(value)
        return [
            LabelBucket(float(start), label, unknown, c["flows"], c["packets"], c["bytes"])
            for (start, label, unknown), c in sorted(sums.items())
            if c["flows"] > 0
        ]

    def stats_resolution(self, bucket_s: float) -> float:
        return float(max(AGG_S, math.ceil(bucket_s / AGG_S) * AGG_S))

    def count(self) -> int:
        return int(self._redis.zcard(self._k("t", "classified")))

    def _close(self) -> None:
        self._redis.close()
