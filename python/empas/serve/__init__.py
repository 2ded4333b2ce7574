"""Serving: generation over HTTP with plans applied (:mod:`.server`: one model
held once, every plan's packed linears beside it; FastAPI + uvicorn). Importing
this package imports torch, fastapi and pydantic; ``import empas`` does not."""

from __future__ import annotations

from .server import (
    FP16_PLAN,
    BackgroundServer,
    GenerateRequest,
    GenerateResponse,
    Limits,
    PlanServer,
    RequestError,
    ServeError,
    bind_socket,
    create_app,
    run,
    serve_in_thread,
)

__all__ = [
    "FP16_PLAN",
    "BackgroundServer",
    "GenerateRequest",
    "GenerateResponse",
    "Limits",
    "PlanServer",
    "RequestError",
    "ServeError",
    "bind_socket",
    "create_app",
    "run",
    "serve_in_thread",
]
