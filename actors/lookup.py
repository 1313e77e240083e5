"""Key lookup and org access: two small read-side actors over the domain projection.

- `KeyLookupActor` answers batch lookups of public keys (`rc.keys.lookup`) and API token
  authentication (`user.authenticate`, asked for every AI request).
- `OrgAccessActor` answers `has_org_access` and relay authentication data
  (`rc.org.access`), and keeps `relayauth:<relay_id>` in Redis so the gateway can check a
  signature without a NATS hop - written again whole when Redis comes back after a loss
  (actors/redis_watch.py), so relays keep authenticating from Redis while NATS is down.
  A relay key has an entry under every id it ever registered under, each saying what the
  key may do now: re-registering under a new id leaves no old id with old rights. Entries
  are sealed (bus/config_cache.py) and valid for `RELAY_AUTH_VALIDITY`, rewritten well
  before that: a genuine entry put back after a ban is good for that long at most.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

from actors.base import ProjectionActor
from actors.redis_watch import MaterializingActor
from bus.cache import CacheUnavailable
from bus.cache_keys import RELAY_AUTH_MAC_BUCKET
from bus.config_cache import RELAY_AUTH_PREFIX, seal
from bus.runtime import BUS_ERRORS
from bus.service import Call
from domain.model import Relay
from domain.projections import KEYS, ORG_OPTIONS, RELAYS, USERS, Projection
from domain.queries import answer_query, keys_lookup, org_has_access, relay_auth
from domain.state import Changes
from messages.events import DomainEvent
from messages.subjects import RELAY_CHANGED

log = structlog.get_logger(__name__)
RELAY_AUTH_VALIDITY = 900  # seconds a relayauth entry is good for (in the entry and as its Redis TTL)


class KeyLookupActor(ProjectionActor):
    name = "keys"
    # key lookups and token checks: keys with their projects, users with their tokens
    projection = Projection("keys", {KEYS, USERS})

    def handle_keys_lookup(self, call: Call) -> dict[str, Any]:
        return keys_lookup(self.state, call.payload["public_keys"])

    def handle_user_authenticate(self, call: Call) -> Any:
        # Every AI request asks: answered here on the read side, not behind the writes.
        return answer_query(self.state, "user.authenticate", call.payload)


class OrgAccessActor(MaterializingActor):
    name = "orgs"
    # which relays may do what: relays, and the orgs' options (their trusted relays)
    projection = Projection("org access", {ORG_OPTIONS, RELAYS})
    mac_bucket = RELAY_AUTH_MAC_BUCKET
    rewrite_every = RELAY_AUTH_VALIDITY / 3

    def rewrite_all(self) -> None:
        self._write(list(self.state.relays.values()), announce=False)
        log.info("orgs.relay_auth_rewritten", relays=len(self.state.relays))

    def handle_org_has_access(self, call: Call) -> dict[str, bool]:
        return org_has_access(self.state, call.payload)

    def handle_org_relay_auth(self, call: Call) -> dict[str, Any]:
        # CAUGHT_UP (messages/endpoints.py): registration right after `relayctl relay allow`
        # must see the allowance.
        relay_id, public_key = call.payload.get("relay_id"), call.payload.get("public_key")
        by_id = self.state.relay_by_id(relay_id) if relay_id else None
        if by_id is not None and relay_id and self.materialized:
            # A gateway asks by id when Redis had no entry (evicted, say): put it back.
            self._store({RELAY_AUTH_PREFIX + relay_id: self._entry(by_id, relay_id)})
        return {"byId": relay_auth(self.state, by_id, relay_id) if relay_id else None,
                "byKey": relay_auth(self.state, self.state.relays.get(public_key)) if public_key else None}

    def on_changes(self, changes: Changes, batch: list[tuple[int, list[DomainEvent]]]) -> None:
        if self.cache is None or not self.is_replayed():
            return
        if not self.materialized:
            relays = list(self.state.relays.values())
            self.rewritten_at = time.monotonic()
        else:
            relays = [self.state.relays[k] for k in changes.relays if k in self.state.relays]
        self.materialized = True
        self._write(relays, announce=True)

    def _entry(self, relay: Relay, relay_id: str) -> bytes:
        info = relay_auth(self.state, relay, relay_id)
        assert info is not None
        info["expires"] = int(time.time()) + RELAY_AUTH_VALIDITY
        return seal(self.mac_key, RELAY_AUTH_PREFIX + relay_id, json.dumps(info).encode())

    def _write(self, relays: list[Relay], announce: bool) -> None:
        # Every id the key ever registered under: each must follow what the key may do now.
        ids = [(r, relay_id) for r in relays for relay_id in r.relay_ids]
        self._store({RELAY_AUTH_PREFIX + relay_id: self._entry(r, relay_id) for r, relay_id in ids})
        if announce and ids:
            self._announce([relay_id for _, relay_id in ids])

    def _store(self, entries: dict[str, bytes]) -> None:
        if not entries or self.cache is None:
            return
        try:
            self.cache.write(entries, ttl=RELAY_AUTH_VALIDITY)
        except CacheUnavailable as exc:  # the gateway falls back to asking us over NATS
            log.warning("orgs.redis_write_failed", error=str(exc))
            if self.watch is not None:
                self.watch.failed()

    def _announce(self, relay_ids: list[str]) -> None:
        """Tell every gateway to drop what it holds of these relays."""
        bus = self.bus

        async def publish() -> None:
            for relay_id in relay_ids:
                await bus.publish(RELAY_CHANGED, relay_id.encode())
            await bus.flush(timeout=2)

        # Before this actor answers anyone who waits on it (see CommandActor), the gateways
        # have been told: a ban is in force by the time `relayctl relay deny` returns.
        try:
            self.runtime.call(publish(), timeout=3)
        except BUS_ERRORS as exc:  # the TTL of the gateways' copies bounds the damage
            log.warning("orgs.announce_failed", error=str(exc))
