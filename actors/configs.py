"""The config builder: project configs computed from the projection, kept in Redis.

Every folded batch says which public keys it touched; the builder recomputes exactly
those configs, and only once every one of them is built does it write them to Redis in
one pipeline (compute, then swap). A config whose build fails keeps its last good revision
in the cache. After each write it publishes `rc.config.changed.<key>`: the new rev, the key's
project and org, and the commit time of the change that made it (gateways stream these to
the console and measure propagation: gateway/api/changes.py).
Entries are sealed with the builder's MAC key (bus/config_cache.py). A key nobody created
(or one since deleted) is answered disabled but never stored - its entry is removed - so
relays asking for made-up keys cannot grow Redis.
At start, once replay reaches the end of the stream, it materializes every key, so a
restart with an empty Redis fills it from the event log; so does Redis coming back after
it died or restarted under a running builder (actors/redis_watch.py). When Redis still
holds what a builder wrote (the global config, sealed with this builder's key, is there),
or there are more than `MATERIALIZE_BEFORE_SERVING` keys, it serves at once and writes
every key again in the background, a chunk per actor message (the keys its replay from a
snapshot changed first): at a million keys the rewrite takes minutes, and the gateway
serves the cached configs (and has a missing one built) meanwhile.

It also answers `config.get` (v2, and v3 with noCache: built on the spot), `config.get_v1`
(by project id), `config.build` (a v3 cache miss: build, store and return) and
`config.history` (the events that shaped a key's config).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from actors.redis_watch import MaterializingActor
from bus import metrics
from bus.cache import CacheUnavailable, ConfigCache
from bus.cache_keys import CONFIG_MAC_BUCKET
from bus.config_cache import DISABLED_BODY, DISABLED_ENTRY, GLOBAL_KEY, cache_key, encode_entry, seal
from bus.runtime import BusRuntime
from bus.seams import Bus
from bus.service import Call
from domain.project_config import build_project_config
from domain.projections import KEYS, ORG_OPTIONS, PROJECT_OPTIONS, Projection
from domain.state import Changes, folded_events, trusted_relay_keys
from messages.errors import NotFound
from messages.events import ORG, DomainEvent, aggregate_subject
from messages.subjects import config_changed

log = structlog.get_logger(__name__)

# The global config every relay asks for before it forwards anything. Relay's own
# normalize_global_config returns this document unchanged (tested).
GLOBAL_CONFIG: dict[str, Any] = {
    "measurements": {
        "builtinMeasurements": [
            {"name": name, "unit": "millisecond"}
            for name in ("fcp", "lcp", "fid", "fp", "ttfb", "ttfb.requesttime", "inp",
                         "app_start_cold", "app_start_warm", "time_to_initial_display",
                         "time_to_full_display")
        ] + [{"name": "cls", "unit": "none"}],
        "maxCustomMeasurements": 10,
    },
    # Sentry's span op defaults: a span with `messaging.system` data is a "message" span.
    # Relay's current GlobalConfig also has quotas, filters, options, metricExtraction and
    # aiModelMetadata, all omitted when empty (as here); aiModelCosts and aiOperationTypeMap
    # are gone from it (the newest sentry_relay's normalize_global_config drops them), so
    # serving them would break the round trip relays rely on.
    "spanOpDefaults": {
        "rules": [{
            "condition": {"op": "not", "inner": {"op": "eq", "name": "span.data.messaging\\.system", "value": None}},
            "value": "message",
        }],
    },
}


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


MATERIALIZE_CHUNK = 2000
# Past this many keys a start writes every config in the background even into an empty
# cache: a million take minutes, past the worker's start timeout (120 s; the 1M bench run's
# builder never started), and config.build answers the gateway's misses meanwhile.
MATERIALIZE_BEFORE_SERVING = 50_000
Entry = tuple[str, tuple[str, ...], bytes]  # (rev, trusted relay keys, document JSON)
DISABLED: Entry = ("", (), DISABLED_BODY)
UNKNOWN: Entry = ("", (), DISABLED_BODY)  # answered like DISABLED, never stored (told apart by identity)
assert UNKNOWN is not DISABLED
GLOBAL_ENTRY: Entry = ("global", (), dumps(GLOBAL_CONFIG))


@dataclass
class WritePending:
    """Write the configs changed and not yet written (`ConfigActor.pending`)."""


@dataclass
class Refill:
    """Write the configs of `keys[at:]` again, a chunk now and the rest in later messages."""

    keys: list[str]
    at: int
    started: float


class ConfigActor(MaterializingActor):
    name = "configs"
    # what a config document is built from: orgs, projects and keys with their options (no relays, users)
    projection = Projection("configs", {ORG_OPTIONS, PROJECT_OPTIONS, KEYS})
    mac_bucket = CONFIG_MAC_BUCKET
    changed_at: float | None = None  # the commit time of the change being materialized

    # -- building --------------------------------------------------------------------------

    def entry(self, public_key: str, *, all_keys: bool = False) -> Entry:
        """Build one key's config; unknown keys (UNKNOWN) and inactive keys/projects are disabled."""
        key = self.state.keys.get(public_key)
        project = self.state.projects.get(key.project_id) if key else None
        org = self.state.orgs.get(project.org_id) if project else None
        if key is None or project is None or org is None:
            return UNKNOWN
        keys = [k for k in self.state.keys_of(project.id) if k.is_active] if all_keys else None
        doc = build_project_config(org, project, key, project_keys=keys)
        if doc.get("disabled"):
            return DISABLED
        return doc["rev"], tuple(trusted_relay_keys(org.options)), dumps(doc)

    def materialize(self, public_keys: Iterable[str], *, with_global: bool = False,
                    keep: bool = True, announce: bool = True) -> dict[str, Entry]:
        """Build, then write, in chunks: memory stays flat however many keys change at once."""
        built: dict[str, Entry] = {}
        chunk: list[str] = []
        for public_key in public_keys:
            chunk.append(public_key)
            if len(chunk) >= MATERIALIZE_CHUNK:
                done = self._materialize_chunk(chunk, with_global=False, announce=announce)
                if keep:
                    built.update(done)
                chunk = []
        done = self._materialize_chunk(chunk, with_global=with_global, announce=announce)
        if keep:
            built.update(done)
        return built

    def _materialize_chunk(self, public_keys: list[str], *, with_global: bool,
                           announce: bool = True) -> dict[str, Entry]:
        built: dict[str, Entry] = {}
        started = time.perf_counter()
        for public_key in public_keys:
            try:
                built[public_key] = self.entry(public_key)
            except Exception as exc:  # keep the last good revision in the cache
                metrics.incr("config.build_failures")
                log.error("configs.build_failed", public_key=public_key, error=str(exc))
        if built:
            metrics.timing("config.build_per_key", (time.perf_counter() - started) / len(built))
            metrics.incr("config.built", len(built))
        if self.cache is None or not (built or with_global):
            return built
        values = {cache_key(k): self._sealed(cache_key(k), e) for k, e in built.items() if e is not UNKNOWN}
        unknown = [cache_key(k) for k, e in built.items() if e is UNKNOWN]
        if with_global:
            values[GLOBAL_KEY] = self._sealed(GLOBAL_KEY, GLOBAL_ENTRY)
        try:
            # A relay sees the whole batch or none of it (compute, then swap).
            self.cache.write(values, delete=unknown)
        except CacheUnavailable as exc:
            log.warning("configs.redis_write_failed", error=str(exc), keys=len(values))
            if self.watch is not None:
                self.watch.failed()
            return built
        if announce:
            self._announce(built)
        return built

    def _sealed(self, name: str, entry: Entry) -> bytes:
        return seal(self.mac_key, name, DISABLED_ENTRY if entry is DISABLED else encode_entry(*entry))

    def _change(self, public_key: str, rev: str) -> bytes:
        """What `rc.config.changed.<key>` carries: the rev, whose key it is, and when the change
        that made it was committed (None: a rebuild at start, not a change)."""
        key = self.state.keys.get(public_key)
        project = self.state.projects.get(key.project_id) if key else None
        org = self.state.orgs.get(project.org_id) if project else None
        return json.dumps({"rev": rev, "publicKey": public_key,
                           "projectId": project.id if project else None,
                           "project": project.slug if project else None,
                           "org": org.slug if org else None, "ts": self.changed_at}).encode()

    def _announce(self, built: dict[str, Entry]) -> None:
        if not self.materialized:
            return
        bus = self.bus
        messages = [(config_changed(k), self._change(k, e[0])) for k, e in built.items()
                    if e is not UNKNOWN]  # nothing was stored for an unknown key

        async def publish() -> None:
            for subject, data in messages:
                await bus.publish(subject, data)

        self.runtime.submit(publish())

    refilling = False

    def __init__(self, runtime: BusRuntime, bus: Bus, cache: ConfigCache | None) -> None:
        super().__init__(runtime, bus, cache)
        self.pending = {}  # changed keys not yet written, in the order they changed
    replay_changed: set[str] | None = None  # what the replay from a snapshot changed (written first)

    def on_changes(self, changes: Changes, batch: list[tuple[int, list[DomainEvent]]]) -> None:
        if not self.is_replayed():
            if self.replay_changed is not None:
                self.replay_changed |= changes.public_keys
            return
        if not self.materialized:
            self._replayed(changes.public_keys)
            return
        if changes.public_keys:
            newest = max((e.ts for _, events in batch for e in events), default=None)
            self.pending.update(dict.fromkeys(changes.public_keys))
            if newest is not None:
                self.pending_newest = max(newest, self.pending_newest or newest)
        self.write_pending(first_chunk=False)

    # When builds fall behind the stream (an import of a million projects), the commits
    # queued in the inbox are folded before more is built, and the keys they change wait
    # here: a set of keys instead of decoded commits piling up in the inbox (the 1M bench
    # run's builder peaked at 1564 MB so). Keys are written a chunk at a time while nothing
    # else waits; a `WritePending` is queued for what is left (it writes at least a chunk,
    # so every pass through the inbox makes progress) and every request is answered after
    # everything pending is written: nothing waits for a later commit.
    pending: dict[str, None]
    pending_newest: float | None = None
    _write_queued = False

    def write_pending(self, first_chunk: bool = True, everything: bool = False) -> None:
        while self.pending:
            if not (everything or first_chunk) and self.actor_inbox.qsize() > 0:  # type: ignore[attr-defined]
                if not self._write_queued:
                    self._write_queued = True
                    self.actor_ref.tell(WritePending())
                return
            first_chunk = False
            self._write_chunk(MATERIALIZE_CHUNK)

    def _write_chunk(self, count: int) -> None:
        keys = list(itertools.islice(self.pending, count))
        for key in keys:
            del self.pending[key]
        newest = self.pending_newest
        if not self.pending:
            self.pending_newest = None
        # From the moment the change was made to the moment its config is in the cache.
        self.changed_at = newest
        try:
            self.materialize(keys)
        finally:
            self.changed_at = None
        if newest is not None:
            metrics.timing("config.propagation", max(0.0, time.time() - newest))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call) and self.pending:
            self.write_pending(everything=True)  # a request sees every change folded before it in the cache
        return super().on_receive(message)

    def on_start(self) -> None:
        super().on_start()
        if self.live_from == 0:  # empty stream: nothing to replay, still publish the global config
            self.materialize([], with_global=True)
            self.materialized = True
        elif self.is_replayed():  # the snapshot covers the whole stream: no commit will come
            self._replayed(set())
        elif self.snapshot_sequence:
            self.replay_changed = set()

    def _replayed(self, changed: set[str]) -> None:
        """Replay is done: write every config, in the background when Redis still holds them."""
        changed = (self.replay_changed or set()) | changed
        self.replay_changed = None
        self.materialized = True
        if len(self.state.keys) <= MATERIALIZE_BEFORE_SERVING and not self._cache_filled():
            self.materialized = False  # announces nothing while every key is written
            self.materialize_all("replayed")
            self.materialized = True
            return
        keys = [k for k in self.state.keys if k not in changed]
        log.info("configs.refill_started", keys=len(keys) + len(changed), changed_first=len(changed))
        self.refilling = True
        self.actor_ref.tell(Refill([*changed, *keys], 0, time.monotonic()))

    def _cache_filled(self) -> bool:
        """Whether the cache holds what this builder writes: the global config, sealed with its
        key, is written with the last chunk of every full write."""
        if self.cache is None:
            return False
        try:
            return self.cache.get(GLOBAL_KEY) == self._sealed(GLOBAL_KEY, GLOBAL_ENTRY)
        except CacheUnavailable:
            return False

    def on_other(self, message: Any) -> Any:
        if isinstance(message, WritePending):
            self._write_queued = False
            self.write_pending()
            return None
        if isinstance(message, Refill):
            chunk = message.keys[message.at:message.at + MATERIALIZE_CHUNK]
            message.at += len(chunk)
            last = message.at >= len(message.keys)
            # Revisions did not change: gateways need no rc.config.changed for a refill.
            self.materialize(chunk, with_global=last, keep=False, announce=False)
            if last:
                self.refilling = False
                log.info("configs.materialized_all", keys=len(message.keys), reason="replayed",
                         seconds=round(time.monotonic() - message.started, 3), background=True)
            else:
                self.actor_ref.tell(message)
            return None
        return super().on_other(message)

    def rewrite_all(self) -> None:
        self.materialize_all("redis_back")

    def materialize_all(self, reason: str) -> None:
        """Write every key's config (and the global config) again, from the projection."""
        started = time.monotonic()
        # Revisions did not change: gateways need no rc.config.changed for a refill.
        self.materialize(list(self.state.keys), with_global=True, keep=False, announce=reason == "replayed")
        log.info("configs.materialized_all", keys=len(self.state.keys), reason=reason,
                 seconds=round(time.monotonic() - started, 3))

    # -- queries ---------------------------------------------------------------------------

    def built_entry(self, public_key: str, *, all_keys: bool = False) -> Entry | None:
        """`entry`, or None when this key's config cannot be built (logged and counted):
        one project's bad data never fails an answer about the others."""
        try:
            return self.entry(public_key, all_keys=all_keys)
        except Exception as exc:
            metrics.incr("config.build_failures")
            log.error("configs.build_failed", public_key=public_key, error=f"{type(exc).__name__}: {exc}")
            return None

    def handle_config_get(self, call: Call) -> dict[str, Any]:
        keys = [k for k in call.payload["public_keys"] if isinstance(k, str)]
        # A key whose build fails is left out: the gateway answers it as pending (v3).
        built = {k: self.built_entry(k) for k in keys}
        return {"entries": {k: list(e) for k, e in built.items() if e is not None}, "global": list(GLOBAL_ENTRY)}

    def handle_config_get_v1(self, call: Call) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for project_id in call.payload["project_ids"]:
            project = self.state.projects.get(project_id) if isinstance(project_id, int) else None
            keys = self.state.keys_of(project.id) if project else []
            active = [k for k in keys if k.is_active]
            entry = self.built_entry(active[0].public_key, all_keys=True) if active else DISABLED
            if entry is not None:
                out[str(project_id)] = list(entry)
        return {"entries": out}

    def handle_config_build(self, call: Call) -> dict[str, Any]:
        keys = [k for k in call.payload["public_keys"] if isinstance(k, str)]
        log.info("configs.build_on_demand", keys=len(keys))
        # The gateway asks for the global config too when the cache had lost it.
        built = self.materialize(keys, with_global=call.payload["global"])
        return {"entries": {k: list(e) for k, e in built.items()},
                "global": list(GLOBAL_ENTRY) if call.payload["global"] else None}

    def handle_config_history(self, call: Call) -> dict[str, Any]:  # CAUGHT_UP (messages/endpoints.py)
        public_key = call.payload["public_key"]
        key = self.state.keys.get(public_key)
        org = self.state.org_of_key(public_key)
        if key is None or org is None:
            raise NotFound(f"No key matching `{public_key}`")
        project = self.state.projects[key.project_id]
        commits = self.runtime.call(self.store.read(aggregate_subject(ORG, org.slug)))
        events = []
        # as folded: an import's parts at its commit, none of one never committed
        for sequence, event in folded_events(commits):
            if _relevant(event, project.slug, public_key):
                events.append({"sequence": sequence, "type": event.type, "id": event.id,
                               "ts": event.ts, "actor": event.actor, "payload": event.payload})
        return {"publicKey": public_key, "events": events}


def _relevant(event: DomainEvent, project_slug: str, public_key: str) -> bool:
    payload = event.payload
    if "public_key" in payload:
        return bool(payload["public_key"] == public_key)
    if "project" in payload:
        return bool(payload["project"] == project_slug)
    return True  # org-level: options, templates, creation
