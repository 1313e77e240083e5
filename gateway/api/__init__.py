"""The management API: Sentry's own API shapes under `/api/0/`, for sentry-cli, the
Terraform provider and any HTTP client (gateway/api/routes.py)."""

from __future__ import annotations

from gateway.api.table import add_management_routes

__all__ = ["add_management_routes"]
