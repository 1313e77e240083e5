"""The console: a browser UI at `/console/` over the management API (gateway/console/session.py)."""

from __future__ import annotations

from gateway.console.session import add_console_routes

__all__ = ["add_console_routes"]
