"""How many copies JetStream keeps of each asset the system creates, and raising it.

Every stream, KV bucket and object store of messages/endpoints.py `STORES` is created with
`RELAYCTL_STREAM_REPLICAS` copies (bus/eventstore.py `stream_replicas`) by whichever
process creates it first. An asset created before that setting was raised - or by an
older relayctl that made only the event stream R3 - keeps its one copy: losing the node
that holds it loses it (for `rc_gateway`, the registration secret: no gateway starts).
The roles may create their assets but never update one (bus/embedded.py NATS_ROLES), so
raising an existing asset's copies is the operator's: `relayctl stream replicate` does it
(a stream update of `num_replicas`, which JetStream applies in place, copying the data to
the new peers), and `relayctl status` says which assets have fewer copies than wanted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js.errors import NotFoundError

from messages.endpoints import KV, OBJECT, STORES, STREAM
from messages.subjects import EVENT_STREAM


def stream_name(name: str, kind: str) -> str:
    """The JetStream stream behind an asset: a KV bucket `b` is `KV_b`, an object store `OBJ_b`."""
    return {STREAM: name, KV: f"KV_{name}", OBJECT: f"OBJ_{name}"}[kind]


ASSETS: tuple[tuple[str, str], ...] = tuple((s.name, stream_name(s.name, s.kind)) for s in STORES)


@dataclass(frozen=True)
class AssetCopies:
    asset: str
    stream: str
    replicas: int | None  # None: not created yet
    wanted: int

    @property
    def short(self) -> bool:
        return self.replicas is not None and self.replicas < self.wanted

    def to_dict(self) -> dict[str, Any]:
        return {"asset": self.asset, "stream": self.stream, "replicas": self.replicas, "wanted": self.wanted}


async def copies(js: Any, wanted: int | None) -> list[AssetCopies]:
    """Each asset's copies now. `wanted` None: as many as the event stream has (an event
    stream of three copies beside a one-copy registration secret is the case to catch)."""
    found: dict[str, int | None] = {}
    for _asset, stream in ASSETS:
        try:
            found[stream] = int((await js.stream_info(stream)).config.num_replicas or 1)
        except NotFoundError:
            found[stream] = None
    if wanted is None:
        wanted = found.get(EVENT_STREAM) or 1
    return [AssetCopies(asset, stream, found[stream], wanted) for asset, stream in ASSETS]


async def replicate(js: Any, wanted: int) -> list[AssetCopies]:
    """Raise every existing asset with fewer than `wanted` copies to `wanted` (never lowers
    one); returns what was changed."""
    changed = []
    for entry in await copies(js, wanted):
        if not entry.short:
            continue
        config = (await js.stream_info(entry.stream)).config
        config.num_replicas = wanted
        await js.update_stream(config)
        changed.append(entry)
    return changed
