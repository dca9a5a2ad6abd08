"""The server itself: health, what a WebSocket client needs to know, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from serving.deps import MetricsDep, ServiceDep, SettingsDep
from serving.protocol import Limits, websocket_info

router = APIRouter(tags=["system"])


@router.get("/api/v1/health")
async def health(service: ServiceDep) -> JSONResponse:
    """``ok`` (200) or ``degraded`` (503: storage down, no bundle, or restarting), with the
    policy version, the memory size and the storage status."""
    report = await service.health()
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/websocket-info")
async def ws_info(settings: SettingsDep) -> dict[str, Any]:
    """Message types and their schemas, limits, the heartbeat interval, the version."""
    return websocket_info(Limits(
        max_message_bytes=settings.max_message_bytes,
        rate_limit_per_second=settings.rate_limit_per_second,
        rate_limit_burst=settings.rate_limit_burst,
        max_connections=settings.max_connections,
        heartbeat_interval=settings.heartbeat_interval,
        idle_timeout=settings.idle_timeout,
    ))


@router.get("/metrics")
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus text format (bind to a private port in production)."""
    return Response(registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
