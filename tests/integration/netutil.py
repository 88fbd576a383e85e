"""Helpers shared by the integration tests (loopback only)."""

from __future__ import annotations

from krs_lab.ports import free_port

__all__ = ["free_port"]
