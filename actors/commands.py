"""The command actor: control messages in, domain events out.

It decides each command with `domain.decider.Decider` on its projection, appends the
decision's events expecting the aggregate's last sequence, and replies once they are
folded. On a conflict it catches up and decides again, up to `MAX_ATTEMPTS` times; an
error that might come from stale state (unknown or duplicate names) is re-checked once
after catching up. Ids and key claims: see domain/decider.py.

The management API's writes arrive on their own subjects (`rc.api.*`, messages/endpoints.py
`on_behalf`) with the bearer token of the user they are sent for. Such a write is decided
only once everything stored before it arrived is folded (a token revoked just before is
refused) and `domain.authorization.authorize` found the token live and its user allowed the
command in that org; that user is the actor of its events. The token goes no further.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from actors.base import ProjectionActor, call_log_context
from bus import metrics
from bus.eventstore import CommitTooLarge
from bus.runtime import BUS_ERRORS, BusRuntime
from bus.seams import Bus
from bus.service import Call
from bus.settings import InvalidSetting, Settings
from domain.authorization import authorize
from domain.decider import Decider
from domain.decisions import Decision, IdDraw, IdPool
from domain.importer import ImportDecision
from domain.projections import EVERYTHING
from domain.queries import answer_query
from messages.endpoints import COMMANDS, TOKEN_FIELD, on_behalf, queries_of
from messages.errors import Conflict, NotFound, RelayctlError, Unavailable
from messages.events import RELAY, DomainEvent, encode_commit

log = structlog.get_logger(__name__)
MAX_ATTEMPTS = 50
ID_BLOCK = 50  # ids a handler claims at a time; a restart leaves the rest of its block unused
# A command short of many ids (an import) claims for this many more like it, up to ID_BLOCK_MAX
# ids (or what it lacks, if more): an import of orgs in turn then claims ids once every
# ID_AHEAD orgs instead of twice an org (project and key ids), each claim a commit appended
# and folded before the org's own.
ID_AHEAD = 20
ID_BLOCK_MAX = 5000

# Of each part commit of an import in parts, the bytes left for its markers (ImportStarted,
# ImportPart, ImportCommitted, ImportAbandoned: well under this) beside the projects' events.
IMPORT_MARKER_RESERVE = 2048
# The most bytes of events an import puts in one commit, even when the store takes more: every
# projection process receives each commit once per actor it runs (five pushes of an 8 MB
# commit to one connection outlast nats-server's write deadline on a busy machine, which
# then drops the connection as a slow consumer), and a smaller part is a smaller step to resume from.
IMPORT_PART_BYTES = 1024 * 1024
CLAIM_KEY_BYTES = 40  # what one public key takes in a KeysClaimed commit, at most

# Changes that decide which relays may register or fetch what: their reply waits for the
# org access actor (and through it every gateway) to have applied them.
RELAY_ACCESS_COMMANDS = {"relay.allow", "relay.deny", "org.trust_relay", "org.untrust_relay"}
RELAY_ACCESS_WAIT = 3.0  # at most this long; the command's own deadline bounds it too

# Answered at once, from what this handler knows, even when the store does not answer.
STATUS_QUERY = "stream.status"
QUERY_TYPES = queries_of(COMMANDS) - {STATUS_QUERY}


def snapshot_interval(settings: Settings) -> int:
    """RELAYCTL_SNAPSHOT_EVERY: commits between two snapshots; a restart replays at most that
    many after the last one (fewer: shorter restarts, more time packing snapshots)."""
    every = settings.value("RELAYCTL_SNAPSHOT_EVERY")
    if every < 0:
        raise InvalidSetting(f"RELAYCTL_SNAPSHOT_EVERY={every} is below 0 (0: no snapshots)",
                             {"setting": "RELAYCTL_SNAPSHOT_EVERY"})
    return int(every)


def id_block(missing: int) -> int:
    """How many ids to claim for a command that lacks `missing` of a kind."""
    return max(ID_BLOCK, missing, min(missing * ID_AHEAD, ID_BLOCK_MAX))


class Kept:
    """A decision held while what it waits for (a catch-up, its key claims) is stored and
    folded, taken again instead of deciding the command once more (an import of 100 projects
    takes about a millisecond to decide) when nothing it was decided on can have changed:
    the same actor decides it (a token checked again on every attempt), no id it took has
    been handed out since, and
    - `exact`: nothing at all was folded since; or
    - else: its own aggregate is where it was (appending it expects exactly that, and a
      change there means deciding again). What else was folded meanwhile cannot alter it:
      the keys it names are claimed for it, so no other org can create them in between
      (Decider.claims_for), and the commit of the claims was appended expecting the claims
      it was decided on (two claims of one key are never both stored)."""

    def __init__(self, decision: Decision, draw: IdDraw, actor: str, handler: CommandActor, exact: bool) -> None:
        self.decision, self.draw, self.actor, self.exact = decision, draw, actor, exact
        self.sequence = handler.state.sequence
        self.version = handler.state.aggregate_version(decision.aggregate, decision.aggregate_id)
        self.ids_handed_out = handler.ids.handed_out

    def still_holds(self, handler: CommandActor, actor: str) -> bool:
        if actor != self.actor or handler.ids.handed_out != self.ids_handed_out:
            return False
        if self.exact:
            return handler.state.sequence == self.sequence
        return handler.state.aggregate_version(self.decision.aggregate, self.decision.aggregate_id) == self.version


class CommandActor(ProjectionActor):
    name = "commands"
    projection = EVERYTHING  # it decides every command: it needs all of the state, with aggregate versions

    def __init__(self, runtime: BusRuntime, bus: Bus, snapshot_every: int | None = None) -> None:
        """`snapshot_every`: commits between two snapshots (every actor folds the same state;
        this kind writes it); by default RELAYCTL_SNAPSHOT_EVERY's default."""
        super().__init__(runtime, bus)
        self.snapshot_every = snapshot_interval(Settings.load({})) if snapshot_every is None else snapshot_every
        self.ids = IdPool()
        self.owner = f"commands-{uuid.uuid4().hex[:12]}"  # names this handler's id blocks
        # The last append the store refused or left unanswered (cleared by the next stored one).
        self.write_error: dict[str, Any] | None = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call):
            return self._command(message)
        return super().on_receive(message)

    def _command(self, call: Call) -> None:
        message_type = call.request.type
        if message_type == STATUS_QUERY:
            self.run_handler(call, lambda _c: self.stream_status())
            return
        if not self.is_replayed():
            self.after(self.live_from, lambda: self._command(call), call)
            return
        if message_type in QUERY_TYPES:
            # Every query of this actor is CAUGHT_UP (messages/endpoints.py), but stream.status.
            self.serve_caught_up(call, lambda: answer_query(self.state, message_type, call.payload))
            return
        if on_behalf(call.subject):
            # decided on everything stored before it arrived, so a revoked token is refused at once
            self.catch_up(lambda: self._attempt(call, attempt=0, synced=True), call)
            return
        self._attempt(call, attempt=0, synced=False)

    def stream_status(self) -> dict[str, Any]:
        """What `relayctl status` shows of the event stream, as this handler sees it."""
        return {"folded": self.state.sequence, "replayed": self.is_replayed(), "skipped": list(self.state.skipped),
                "write_error": self.write_error,
                # imports in parts started and neither committed nor abandoned (domain/importer.py)
                "imports": [p.describe() for p in self.state.imports.values()]}

    def _attempt(self, call: Call, attempt: int, synced: bool, kept: Kept | None = None) -> None:
        if call.expired:
            return
        # One command's boundary: a bug deciding it is that command's internal error; the
        # actor (and every command queued behind it) goes on.
        with call_log_context(call, f"commands {call.request.type}" if attempt == 0 else None):
            try:
                self._decide_and_store(call, attempt, synced, kept)
            except RelayctlError as exc:
                call.error(exc)
            except Exception as exc:
                log.exception("commands.failed", type=call.request.type)
                call.error(RelayctlError(f"internal error in {self.name}: {type(exc).__name__}"))

    def _decide_and_store(self, call: Call, attempt: int, synced: bool, kept: Kept | None = None) -> None:
        actor, payload = call.request.actor, call.payload
        if on_behalf(call.subject):
            # checked again on every attempt: what a retry decides on may have changed
            payload = {k: v for k, v in payload.items() if k != TOKEN_FIELD}
            try:
                actor = "user:" + authorize(self.state, call.request.type, payload, call.payload[TOKEN_FIELD])
            except RelayctlError as exc:
                metrics.incr("commands.refused", tags={"reason": exc.code})
                log.info("commands.refused", type=call.request.type, reason=exc.code, correlation_id=call.request.id)
                call.error(exc)
                return
        reused = kept.decision if kept is not None and kept.still_holds(self, actor) else None
        draw = kept.draw if kept is not None and reused is not None else IdDraw(self.ids)
        decider = Decider(self.state, actor, draw)
        try:
            decision = reused if reused is not None else decider.decide(call.request.type, payload)
            if decision.explicit_keys and not synced:
                # A key named explicitly may be one another handler has just stored: see it first.
                unchanged = Kept(decision, draw, actor, self, exact=True)
                self.catch_up(lambda: self._attempt(call, attempt, True, unchanged), call)
                return
            claim = decider.claims_for(decision, max_keys=max(1, (self.store.commit_limit() - 1024) // CLAIM_KEY_BYTES))
            commits = self._commits(decision)
        except (NotFound, Conflict) as exc:
            if not synced:
                self.catch_up(lambda: self._attempt(call, attempt, True), call)
            else:
                call.error(exc)
            return
        except RelayctlError as exc:
            call.error(exc)
            return
        if not commits:
            call.sequence = self.state.sequence  # already in effect as of what is folded
            self.run_handler(call, lambda _c: decision.result(self.state))
            return
        try:
            # Before anything is claimed for it: a commit that can never be stored needs nothing.
            # (An import's commits were measured as they were packed.)
            if not isinstance(decision, ImportDecision):
                self.store.check_size(commits[0])
        except CommitTooLarge as exc:
            call.error(self._too_large(call, exc))
            return
        if draw.short or claim is not None:
            # Not stored as it is: it holds placeholder ids, or names keys not claimed yet.
            # Claim every kind of id it lacks and its keys, then decide it again, once.
            prerequisites: list[tuple[Decision, Callable[[], None]]] = []
            for kind, missing in draw.short.items():
                block = decider.claim_ids(kind, id_block(missing), self.owner)
                prerequisites.append((block, self._pool_adds(kind, block.events[0].payload)))
            if claim is not None:
                prerequisites.append((claim, lambda: None))
            # Only keys to claim: the decision stands as long as its org and the ids it took do.
            standing = None if draw.short else Kept(decision, draw, actor, self, exact=False)
            self._prerequisites(call, attempt, prerequisites, standing)
            return
        sequence = self._append(call, attempt, decision, draw, commits[0])
        for n, events in enumerate(commits[1:], start=2):
            # The next part of an import expects the one just stored as its org's last commit.
            if sequence is None:
                return
            log.info("commands.import_part_stored", sequence=sequence, part=n - 1, parts=len(commits),
                     correlation_id=call.request.id)
            sequence = self._append(call, attempt, decision, None, events, expected=sequence)
        if sequence is None:
            return
        log.info("commands.stored", type=call.request.type, sequence=sequence, commits=len(commits),
                 events=[e.type for e in commits[-1]][:20], correlation_id=call.request.id)

        def reply() -> None:
            call.sequence = sequence  # a read passing it as `after` sees this write
            self.run_handler(call, lambda _c: decision.result(self.state))

        if call.request.type in RELAY_ACCESS_COMMANDS:
            self.after(sequence, lambda: self._await_relay_access(decision, sequence, reply), call)
        else:
            self.after(sequence, reply, call)

    def _pool_adds(self, kind: str, claimed: dict[str, Any]) -> Callable[[], None]:
        """Once a claimed block of ids is stored: this handler may hand them out."""
        return lambda: self.ids.add(kind, claimed["first"], claimed["count"])

    def _prerequisites(self, call: Call, attempt: int, commits: list[tuple[Decision, Callable[[], None]]],
                       kept: Kept | None = None) -> None:
        """Append the commits the command needs first (ids, key claims; `stored` runs once
        each is stored), then decide it again once they are folded (or take `kept`)."""
        sequence: int | None = None
        for decision, stored in commits:
            sequence = self._append(call, attempt, decision, None)
            if sequence is None:
                return
            stored()
            log.info("commands.prerequisite_stored", type=call.request.type, sequence=sequence,
                     commit=decision.events[0].type, correlation_id=call.request.id)
        if sequence is not None:
            self.after(sequence, lambda: self._attempt(call, attempt + 1, True, kept), call)

    def _commits(self, decision: Decision) -> list[list[DomainEvent]]:
        """The commits that store `decision`: its events as one, or none when it changes
        nothing; an import too large for one commit (or a piece of an import in parts) as
        its part commits, each within the store's limit."""
        if not isinstance(decision, ImportDecision):
            return [decision.events] if decision.events else []
        budget = min(self.store.commit_limit(), IMPORT_PART_BYTES) - IMPORT_MARKER_RESERVE
        if decision.whole:
            if not decision.events:
                return []
            if len(encode_commit(decision.events)) <= budget:
                return [decision.events]
            if decision.session is None:
                decision.with_session(uuid.uuid4().hex)  # a client that sent it whole: no resume by id
        return decision.commits(budget, lambda e: len(encode_commit([e])))

    def _append(self, call: Call, attempt: int, decision: Decision, draw: IdDraw | None,
                events: list[DomainEvent] | None = None, expected: int | None = None) -> int | None:
        """Append `events` (the decision's, by default) expecting `expected` (by default its
        aggregate's folded version); the sequence, or None when the call is taken care of (a
        retry after a conflict is scheduled, or an error replied). The ids `draw` took are
        used up unless the commit was surely not stored."""
        events = decision.events if events is None else events
        if expected is None:
            expected = self.state.aggregate_version(decision.aggregate, decision.aggregate_id)
        try:
            with metrics.timer("events.append", tags={"command": call.request.type}):
                sequence = int(self.runtime.call(self.store.append(events, expected)))
        except Conflict as exc:
            metrics.incr("events.append_conflicts")
            if attempt + 1 >= MAX_ATTEMPTS:
                call.error(Conflict("too many concurrent changes to the same object; retry"))
                return None
            last = exc.details.get("last_sequence")
            retry = lambda: self._attempt(call, attempt + 1, True)  # noqa: E731
            if isinstance(last, int):
                self.after(last, retry, call)
            else:
                self.catch_up(retry, call)
            return None
        except CommitTooLarge as exc:
            call.error(self._too_large(call, exc))
            return None
        except BUS_ERRORS as exc:
            if draw is not None:
                draw.commit()  # perhaps stored after all: never hand these ids out again
            error = exc if isinstance(exc, RelayctlError) else Unavailable(
                "the event store is unavailable; nothing was changed")
            self.write_error = {"message": error.message, "since": (self.write_error or {}).get("since", time.time()),
                                "command": call.request.type}
            metrics.incr("events.append_failed", tags={"reason": type(exc).__name__})
            log.error("commands.append_failed", error=str(exc), type=call.request.type,
                      correlation_id=call.request.id)
            call.error(error)
            return None
        if draw is not None:
            draw.commit()
        self.write_error = None
        return sequence

    def _too_large(self, call: Call, exc: CommitTooLarge) -> CommitTooLarge:
        # An import is split into commits within the limit (`_commits`): one that is not is a
        # bug of that split, said as it is.
        return exc

    def _await_relay_access(self, decision: Decision, sequence: int, reply: Callable[[], None]) -> None:
        """Reply only once the org access actor applied a change to who may do what.

        Its `org.relay_auth` answer waits until it has folded everything stored so far,
        written `relayauth:*` and told the gateways; so a relay banned (or trusted) by a
        command is refused (or served) by the next request after the command returns. The
        wait is asynchronous: this actor goes on with other commands meanwhile.
        """
        payload = decision.events[0].payload
        public_key = payload.get("public_key") if decision.aggregate == RELAY else None

        def confirmed(error: BaseException | None, _result: Any) -> None:
            if error is not None:  # no org access actor running: nothing to wait for
                log.info("commands.relay_access_not_confirmed", error=str(error))
            reply()

        # `after`: org access answers once it folded this command's commit, asking JetStream nothing.
        self.when_done(self.bus.request("org.relay_auth", {"public_key": public_key or decision.aggregate_id},
                                        timeout=RELAY_ACCESS_WAIT, after=sequence), confirmed)
