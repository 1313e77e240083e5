"""The pure domain: the model, the fold, the decisions, the queries and what they build.

Nothing here does I/O or knows an actor, a bus or a process: every function takes the state
it reads and returns values (events, replies, documents). It imports only the standard
library, pure libraries (sentry_relay's validators, prometheus_client's text format) and the
wire vocabulary of messages/ (events, errors, schema patterns). See docs/architecture.md.
"""
