"""Search routes (embedkit's own JSON)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
