"""`event store` and `openai`: error events and AI fix suggestions from the command line.

- `relayctl event store FILE --project ORG/PROJECT [--json]` validates and stores a
  Sentry error event (FILE may be `-` for stdin) through the AI actor (`events.store`)
  and prints its id; an invalid event is refused with the reason, nothing is stored.
- `relayctl openai --event FILE [--model M] [--dump-prompt] [--json]` explains one event.
  `--dump-prompt` prints `describe_event_for_ai(event, model)` as indented JSON and calls
  no model. Otherwise the command asks the model itself (`AIConfig.from_settings`:
  OPENAI_BASE_URL, OPENAI_API_KEY, RELAYCTL_AI_MODEL, RELAYCTL_AI_TIMEOUT; `--model`
  wins) and prints the suggestion as it streams, then a newline; `--json` prints
  `{"suggestion": ...}` once it is complete. Going to the model directly rather than
  through `rc.ai.suggest` means it needs no running system and no stored event: it is
  the tool to try a prompt or a model on an event file. Org policies and the suggestion
  cache belong to the HTTP API.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cli.context import Context, emit, fail, split_project

pass_ctx = click.make_pass_decorator(Context)


def _read_event(file: Any) -> Any:
    try:
        return json.load(file)
    except ValueError as exc:
        fail(f"{file.name} is not valid JSON: {exc}")


def register(main: click.Group) -> None:
    @main.group()
    def event() -> None:
        """Sentry error events (for AI fix suggestions)."""

    @event.command("store")
    @click.argument("file", type=click.File("r"))
    @click.option("--project", "ref", required=True, metavar="ORG/PROJECT", help="The project the event belongs to.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @pass_ctx
    def event_store(ctx: Context, file: Any, ref: str, as_json: bool) -> None:
        """Validate and store an error event; prints its id."""
        org_slug, project_slug = split_project(ref)
        data = _read_event(file)
        if not isinstance(data, dict):
            fail(f"{file.name}: an event must be a JSON object")
        result = ctx.request("events.store", {"org": org_slug, "project": project_slug, "event": data})
        emit(as_json, {"eventId": result["eventId"]}, f"Stored event {result['eventId']} in `{ref}`")

    @main.command("openai")
    @click.option("--event", "file", required=True, type=click.File("r"), help="A Sentry error event (JSON).")
    @click.option("--model", default=None, help="The model (default: RELAYCTL_AI_MODEL, else gpt-3.5-turbo).")
    @click.option("--dump-prompt", is_flag=True, help="Print the prompt data and call no model.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def openai_(ctx: Context, file: Any, model: str | None, dump_prompt: bool, as_json: bool) -> None:
        """Suggest a fix for an error event with an OpenAI-compatible model."""
        from actors.ai import AIConfig
        from actors.ai_model import AIError, AINotConfigured
        from domain.ai_prompt import InvalidEvent, describe_event_for_ai, validate_error_event

        try:
            checked = validate_error_event(_read_event(file))
        except InvalidEvent as exc:
            fail(f"{file.name}: {exc}")
        config = AIConfig.from_settings(ctx.settings)
        local = ctx.load_state().get("llm")
        if not config.configured and local:
            # No backend of the user's: the local model that `relayctl up` started.
            from bus.local_model import MODEL_NAME

            config = AIConfig(base_url=f"{local}/v1", api_key="local", model=MODEL_NAME, timeout=config.timeout)
        model = model or config.model
        description = describe_event_for_ai(checked, model)
        if dump_prompt:
            click.echo(json.dumps(description, indent=2, ensure_ascii=False))
            return
        started = False
        try:
            with config.client(model) as client:
                if as_json:
                    emit(True, {"suggestion": client.suggestion(description)})
                    return
                for chunk in client.stream_suggestion(description):
                    started = True
                    click.echo(chunk, nl=False)
                    sys.stdout.flush()
        except AINotConfigured as exc:
            fail(f"{exc.message}: set OPENAI_BASE_URL (any OpenAI-compatible server) or OPENAI_API_KEY")
        except AIError as exc:
            if started:
                click.echo()
            fail(exc.message)
        click.echo()
