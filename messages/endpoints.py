"""One table of every NATS endpoint, published subject and JetStream store, with who may use it.

- `ENDPOINTS`: request/reply subjects. Each is served by one actor (its queue group is
  `rc-<actor>`), accepts only its own message types - a command changes something, a
  query only reads - and may be called by the roles in `callers` (the operator may call
  everything). Every control message has an endpoint of its own,
  `rc.ctl.<aggregate>.<command>`, so a subject a role may call never carries another type.
  The management API's writes have endpoints of their own too, `rc.api.<aggregate>.<command>`
  (`on_behalf`): the same command, sent by the gateway for a user, each request carrying that
  user's bearer token (`token`), which the serving actor checks - the user, the org, the
  scope the command needs (domain/authorization.py) - before it decides anything; the user
  is the actor its events record. The gateway may call none of the operator's `rc.ctl.`
  writes, so its NATS credentials alone change nothing.
  Each row says, per message type, what a caller and the serving actor need to know:
  - retry safety (`retry_safe`): every query, and the commands listed `idempotent` - those
    a second copy can never make do more, nor undo a change someone made in between. A
    caller that got no answer may send these again; any other command it never resends.
  - consistency (`consistency`), for a query: `CAUGHT_UP` ones are answered once the
    actor has folded every commit stored before the query arrived - or, when the request
    names a stream sequence (`after`, the `sequence` a write's reply carries), every commit
    up to it, with no call to JetStream - so a caller reads its own writes; `LATEST` ones
    are answered from what the actor holds when the query arrives.
- `TOPICS`: publish-only subjects, with the roles that publish and subscribe them.
- `STORES`: the JetStream stream and buckets, with the roles that read and write them.

A NATS role is named after the process that connects with it: `operator` (the CLI), one
role per actor and `gateway`. Derived from this table, never written twice: the role
permissions of the NATS that `up` runs (bus/embedded.py `NATS_ROLES`), the subject a
client sends a message type to (bus/client.py), the endpoints each actor serves
(actors/worker.py), which of its types the command actor answers as queries
(actors/commands.py), how fresh each query's answer is (actors/base.py) and the CLI's
retry policy (cli/context.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from messages import subjects
from messages.commands import CONTROL, QUERIES
from messages.schema import Schema, field

__all__ = [
    "ACTORS", "ENDPOINTS", "GATEWAY", "OBJECT", "OPERATOR", "REPLY_WINDOW", "ROLES", "STORES",
    "STREAM", "TOPICS", "KV", "Endpoint", "Store", "Topic", "endpoint_for", "retry_safe", "served_by",
    "CAUGHT_UP", "LATEST", "consistency", "is_query", "queries_of", "API_WRITES", "TOKEN_FIELD", "api_subject",
    "on_behalf",
]

OPERATOR = "operator"
GATEWAY = "gateway"
COMMANDS, KEYS, ORGS, CONFIGS, METRICS, TRANSPORT, AI, FORWARDER = (
    "commands", "keys", "orgs", "configs", "metrics", "transport", "ai", "forwarder")
ACTORS = (COMMANDS, KEYS, ORGS, CONFIGS, METRICS, TRANSPORT, AI, FORWARDER)
ROLES = (OPERATOR, *ACTORS, GATEWAY)

# How long a service may still answer a request it received. No caller waits longer (the
# longest deadline is an AI suggestion stream's 180 s).
REPLY_WINDOW = 300


@dataclass(frozen=True)
class Endpoint:
    """A request/reply subject served by one actor."""

    subject: str
    actor: str
    commands: tuple[str, ...] = ()  # message types that change something
    queries: tuple[str, ...] = ()  # message types that only read: safe to retry
    callers: tuple[str, ...] = ()  # roles that may send requests here, besides the operator
    streamed: bool = False  # answers with a series of chunk replies, then the result
    idempotent: tuple[str, ...] = ()  # commands safe to send again (see the module docstring)
    caught_up: tuple[str, ...] = ()  # queries answered CAUGHT_UP; the others are LATEST
    # sent on behalf of a user: each request carries the user's token (`TOKEN_FIELD`), checked
    # by the serving actor, and the user it names is the request's actor
    on_behalf: bool = False

    @property
    def types(self) -> tuple[str, ...]:
        return self.commands + self.queries

    @property
    def queue_group(self) -> str:
        return f"rc-{self.actor}"

    def may_call(self, role: str) -> bool:
        return role == OPERATOR or role in self.callers


@dataclass(frozen=True)
class Topic:
    """A publish-only subject (a NATS pattern: `*` is one token, `>` the rest)."""

    subject: str
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...] = ()


STREAM, KV, OBJECT = "stream", "kv", "object"


@dataclass(frozen=True)
class Store:
    """A JetStream stream, KV bucket or object store, created by the first process that may
    create it: any reader of the event stream, a writer of a bucket (whoever creates a
    stream chooses its subjects). The event stream is written by publishing on its
    subjects (`TOPICS`)."""

    name: str
    kind: str
    readers: tuple[str, ...]
    writers: tuple[str, ...] = ()
    # its readers run durable pull consumers on it (a stream they do not write): they pull
    # and ack, besides what ordered consumers need
    consume: bool = False


CAUGHT_UP, LATEST = "caught_up", "latest"


def _control(message_type: str, *, query: bool = False, callers: tuple[str, ...] = (),
             caught_up: bool = True, idempotent: bool = False, actor: str = COMMANDS) -> Endpoint:
    """The endpoint of one control message; its queries are CAUGHT_UP unless told not."""
    types = (message_type,)
    return Endpoint(subjects.control(message_type), actor, commands=() if query else types,
                    queries=types if query else (), callers=callers,
                    caught_up=types if query and caught_up else (), idempotent=types if idempotent else ())


def _api(message_type: str) -> Endpoint:
    """The management API's endpoint of the command `message_type`: the gateway sends it for
    the user whose token the request carries; the command handlers check that token."""
    return Endpoint(subjects.api(message_type), COMMANDS, commands=(message_type,), callers=(GATEWAY,),
                    on_behalf=True)


# The field of an `on_behalf` request that carries the user's bearer token, as the client sent it.
TOKEN_FIELD = "token"

# The writes of the management API (gateway/api/writes.py): orgs, their trusted relays,
# members, teams, projects and keys, and relay access (superusers and `relayctl.admin`).
# Users and tokens stay the operator's.
API_WRITES = (
    "relay.allow", "relay.deny",
    "org.create", "org.update", "org.trust_relay", "org.untrust_relay", "org.member_add", "org.member_remove",
    "team.create", "team.delete", "project.create", "project.update", "project.option_set",
    "project.option_unset", "project.team_add", "project.team_remove", "project.delete",
    "key.create", "key.update", "key.rate_limit", "key.enable", "key.disable", "key.delete",
)

ENDPOINTS: tuple[Endpoint, ...] = (
    # control messages: the command handlers
    _control("org.create"),
    _control("org.option_set"),
    _control("org.option_get", query=True),
    _control("org.option_unset"),
    _control("org.trust_relay"),  # an org's own trusted relays (Sentry's org PUT)
    _control("org.untrust_relay"),
    _control("org.template_set"),
    _control("project.create"),
    _control("project.option_set"),
    _control("project.option_get", query=True),
    _control("project.option_unset"),
    _control("project.disable"),
    _control("project.enable"),
    _control("project.delete"),
    _control("key.create"),
    _control("key.disable"),
    _control("key.enable"),
    _control("key.delete"),
    _control("key.rate_limit"),
    _control("key.list", query=True),
    _control("relay.allow"),
    _control("relay.deny"),
    _control("relay.list", query=True, callers=(GATEWAY,)),  # the management API's relay list
    _control("relay.status", query=True),
    # a relay that completed the signed registration handshake (the handler refuses banned ones)
    _control("relay.register", callers=(GATEWAY,), idempotent=True),
    _control("user.create"),
    _control("user.token_create"),
    _control("user.permission_add"),
    _control("user.permission_remove"),
    _control("user.permission_list", query=True),
    # an API token of an AI request: on the read side (the key lookup actor), never queued
    # behind the command actor's writes
    _control("user.authenticate", query=True, callers=(GATEWAY,), actor=KEYS),
    # API tokens, org members (the CLI) and the management API's reads (gateway/api/)
    _control("token.create"),
    _control("token.list", query=True),
    _control("token.revoke"),
    _control("org.update"),
    _control("org.member_add"),
    _control("org.member_remove"),
    _control("org.member_list", query=True, callers=(GATEWAY,)),
    _control("project.update"),
    _control("team.create"),
    _control("team.delete"),
    _control("project.team_add"),
    _control("project.team_remove"),
    _control("key.update"),
    _control("api.orgs", query=True, callers=(GATEWAY,)),
    _control("api.org", query=True, callers=(GATEWAY,)),
    _control("api.projects", query=True, callers=(GATEWAY,)),
    _control("api.project", query=True, callers=(GATEWAY,)),
    _control("api.keys", query=True, callers=(GATEWAY,)),
    _control("api.key", query=True, callers=(GATEWAY,)),
    _control("api.project_options", query=True, callers=(GATEWAY,)),
    _control("import.org"),
    _control("import.abandon"),
    _control("export.orgs", query=True),
    _control("stream.status", query=True, caught_up=False),  # answered at once, even when the store is down
    # actor queries
    Endpoint(subjects.KEYS_LOOKUP, KEYS, queries=("keys.lookup",), callers=(GATEWAY,)),
    # the command handlers wait here until a relay access change is applied
    Endpoint(subjects.ORG_ACCESS, ORGS, queries=("org.has_access", "org.relay_auth"), callers=(GATEWAY, COMMANDS),
             caught_up=("org.relay_auth",)),
    Endpoint(subjects.CONFIG_GET, CONFIGS, queries=("config.get", "config.get_v1", "config.history"),
             callers=(GATEWAY,), caught_up=("config.get", "config.get_v1", "config.history")),
    Endpoint(subjects.CONFIG_BUILD, CONFIGS, queries=("config.build",), callers=(GATEWAY,)),
    Endpoint(subjects.METRICS_QUERY, METRICS, queries=("metrics.snapshot",), callers=(GATEWAY,)),
    Endpoint(subjects.TRANSPORT_CONTROL, TRANSPORT, commands=("transport.flush",), idempotent=("transport.flush",)),
    Endpoint(subjects.AI_SUGGEST, AI, queries=("ai.suggest",), callers=(GATEWAY,), streamed=True,
             caught_up=("ai.suggest",)),
    Endpoint(subjects.EVENTS_STORE, AI, commands=("events.store",), queries=("events.get",),
             caught_up=("events.get",)),
    # the consumers of the ingest stream (actors/forwarder.py)
    Endpoint(subjects.INGEST_QUERY, FORWARDER, queries=("ingest.status", "ingest.stats", "events.list", "events.show")),
    Endpoint(subjects.INGEST_REPLAY, FORWARDER, commands=("ingest.replay",)),
    # the management API's: counts (no event, no dead letter's contents) and the events of
    # the one project a request names, whose org the gateway has checked the caller may read
    Endpoint(subjects.INGEST_API, FORWARDER, queries=("api.ingest_status", "api.events", "api.event"),
             callers=(GATEWAY,)),
    # the management API's writes, each checked against the token it carries
    *(_api(t) for t in API_WRITES),
)

_EVERY_PROCESS = (*ACTORS, GATEWAY)

TOPICS: tuple[Topic, ...] = (
    # every process reports its metric points and its own errors
    Topic(subjects.METRICS_RECORD, _EVERY_PROCESS, (METRICS,)),
    Topic(subjects.TRANSPORT_ENVELOPE, _EVERY_PROCESS, (TRANSPORT,)),
    # Sentry error events for AI suggestions, from services outside the system
    Topic(subjects.EVENTS_INGEST, (), (AI,)),
    # the gateway streams configs going live to the management API (gateway/api/changes.py)
    Topic(subjects.CONFIG_CHANGED, (CONFIGS,), (GATEWAY,)),
    Topic(subjects.RELAY_CHANGED, (ORGS,), (GATEWAY,)),
    # the only way to append domain events: JetStream stores what is published here
    Topic(subjects.EVENT_SUBJECTS, (COMMANDS,)),
    # the data plane: every envelope (and relay outcomes/metrics) the gateway accepted,
    # stored by RC_INGEST (bus/ingest_store.py); consumers read the stream, never subscribe
    Topic(subjects.INGEST_SUBJECTS, (GATEWAY,)),
)

STORES: tuple[Store, ...] = (
    Store(subjects.EVENT_STREAM, STREAM, readers=ACTORS),
    # Projection snapshots: every actor loads one at start, only the command handlers write
    # them (signed, and checked against the stream at load: bus/snapshots.py).
    Store(subjects.SNAPSHOT_BUCKET, OBJECT, readers=ACTORS, writers=(COMMANDS,)),
    # written by the AI actor (events.store) and the forwarder (the events SDKs send)
    Store(subjects.ERROR_EVENT_BUCKET, KV, readers=(AI, FORWARDER), writers=(AI, FORWARDER)),
    Store(subjects.GATEWAY_BUCKET, KV, readers=(GATEWAY,), writers=(GATEWAY,)),  # the registration secret
    # what gateways saw of each relay lately (last config fetch, last error): `relay status`
    Store(subjects.RELAY_ACTIVITY_BUCKET, KV, readers=(GATEWAY,), writers=(GATEWAY,)),
    # the MAC keys of what Redis holds: the role writing the entries makes its key, gateways check
    Store(subjects.RELAY_AUTH_MAC_BUCKET, KV, readers=(ORGS, GATEWAY), writers=(ORGS,)),
    Store(subjects.CONFIG_MAC_BUCKET, KV, readers=(CONFIGS, GATEWAY), writers=(CONFIGS,)),
    # the ingest stream and the envelopes too large for one of its messages: the gateway
    # appends (it creates both when missing) but reads nothing back
    # appends (it creates both when missing); the forwarder's durable pull consumers read them
    Store(subjects.INGEST_STREAM, STREAM, readers=(FORWARDER,), writers=(GATEWAY,), consume=True),
    Store(subjects.INGEST_BLOB_BUCKET, OBJECT, readers=(FORWARDER,), writers=(GATEWAY,)),
    Store(subjects.FORWARD_DEAD_LETTER_BUCKET, KV, readers=(FORWARDER,), writers=(FORWARDER,)),
)

# A type's endpoint is the one the operator's CLI and the services send it to; the management
# API's copies of some commands (`on_behalf`) are found by `api_subject`.
_BY_TYPE: dict[str, Endpoint] = {t: endpoint for endpoint in ENDPOINTS if not endpoint.on_behalf
                                 for t in endpoint.types}
_ON_BEHALF: dict[str, Endpoint] = {e.subject: e for e in ENDPOINTS if e.on_behalf}


def endpoint_for(message_type: str) -> Endpoint:
    """The endpoint that accepts `message_type`; KeyError for a type nobody serves."""
    return _BY_TYPE[message_type]


def api_subject(message_type: str) -> str:
    """Where the gateway sends the management API's write `message_type` for a user;
    KeyError for a command the API may not send."""
    subject = subjects.api(message_type)
    if subject not in _ON_BEHALF:
        raise KeyError(message_type)
    return subject


def on_behalf(subject: str) -> bool:
    """Whether requests on `subject` are sent for a user, with the user's token to check."""
    return subject in _ON_BEHALF


def retry_safe(message_type: str) -> bool:
    """Whether a request may be sent again when no answer came: queries and idempotent commands."""
    endpoint = _BY_TYPE.get(message_type)
    return endpoint is not None and (message_type in endpoint.queries or message_type in endpoint.idempotent)


def is_query(message_type: str) -> bool:
    endpoint = _BY_TYPE.get(message_type)
    return endpoint is not None and message_type in endpoint.queries


def consistency(message_type: str) -> str | None:
    """CAUGHT_UP or LATEST for a query; None for a command (or a type nobody serves)."""
    endpoint = _BY_TYPE.get(message_type)
    if endpoint is None or message_type not in endpoint.queries:
        return None
    return CAUGHT_UP if message_type in endpoint.caught_up else LATEST


def queries_of(actor: str) -> frozenset[str]:
    """The query types `actor` serves."""
    return frozenset(t for e in ENDPOINTS if e.actor == actor for t in e.queries)


def served_by(actor: str) -> dict[str, dict[str, Schema]]:
    """The endpoints `actor` serves: each subject with the schemas of the types it accepts
    (on an `on_behalf` endpoint, the command's and the user's token)."""
    return {e.subject: {t: _schema(e, t) for t in e.types} for e in ENDPOINTS if e.actor == actor}


def _schema(endpoint: Endpoint, message_type: str) -> Schema:
    schema = _SCHEMAS[message_type]
    return {**schema, TOKEN_FIELD: field(str)} if endpoint.on_behalf else schema


_SCHEMAS: dict[str, Schema] = {**CONTROL, **QUERIES}


def describe() -> str:
    """The table as markdown, one row per endpoint (docs/architecture.md holds it, checked by
    tests/unit/test_endpoints.py; `python -m messages.endpoints` prints it)."""

    def types(e: Endpoint) -> str:
        out = [f"`{t}`" + (" (idempotent)" if t in e.idempotent else "") for t in e.commands]
        out += [f"`{t}` ({CAUGHT_UP if t in e.caught_up else LATEST})" for t in e.queries]
        return ", ".join(out)

    rows = ["| subject | actor | commands, queries (consistency) | callers besides the operator |",
            "|---|---|---|---|"]
    def callers(e: Endpoint) -> str:
        return (", ".join(e.callers) or "-") + (" (for a user: its token checked by the actor)" if e.on_behalf else "")

    rows += [f"| `{e.subject}` | {e.actor} | {types(e)}{' (streamed)' if e.streamed else ''} | "
             f"{callers(e)} |" for e in ENDPOINTS]
    return "\n".join(rows) + "\n"


def _check() -> None:
    """The table is whole and consistent: every message type has exactly one endpoint, every
    subject one row, every role named exists. A mistake fails at import, not in production."""
    types = [t for e in ENDPOINTS if not e.on_behalf for t in e.types]
    api_types = [t for e in ENDPOINTS if e.on_behalf for t in e.types]
    duplicated = sorted({t for t in types if types.count(t) > 1})
    missing = sorted(set(_SCHEMAS) - set(types))
    unknown = sorted(set(types) - set(_SCHEMAS))
    # a write of the API is a command of its own type, whose schema has no field of the token's name
    misfiled_api = sorted({t for t in api_types if t not in CONTROL or api_types.count(t) > 1
                           or t not in _BY_TYPE or t not in _BY_TYPE[t].commands or TOKEN_FIELD in CONTROL[t]})
    subject_list = [e.subject for e in ENDPOINTS] + [t.subject for t in TOPICS]
    repeated = sorted({s for s in subject_list if subject_list.count(s) > 1})
    misfiled = sorted({t for e in ENDPOINTS for t in e.idempotent if t not in e.commands} | {
        t for e in ENDPOINTS for t in e.caught_up if t not in e.queries})
    roles = {e.actor for e in ENDPOINTS} | {r for e in ENDPOINTS for r in e.callers} | {
        r for t in TOPICS for r in (*t.publishers, *t.subscribers)} | {
        r for s in STORES for r in (*s.readers, *s.writers)}
    problems = [f"{what}: {', '.join(items)}" for what, items in (
        ("types with two endpoints", duplicated), ("types without an endpoint", missing),
        ("types without a schema", unknown), ("subjects listed twice", repeated),
        ("API writes that are no single control command (or have a token field)", misfiled_api),
        ("idempotent types that are no command, or caught-up ones no query", misfiled),
        ("unknown roles", sorted(roles - set(ROLES)))) if items]
    if problems:
        raise AssertionError("messages/endpoints.py: " + "; ".join(problems))


_check()


if __name__ == "__main__":
    print(describe(), end="")
