"""A stage's health as faust's web server tells it: `/healthz` (alive), `/readyz` (its
state recovered, and progress on every source partition it holds with lag), and in chaos
tests only, a partition paused on purpose."""

from __future__ import annotations

import asyncio

import faust

from services.common.progress import Progress
from services.common.stage_state import BatchStore, offset_key


def health_pages(app: faust.App, name: str, progress: Progress | None, *,
                 fault_injection: bool = False) -> None:
    @app.page("/readyz")
    async def readyz(web: object, request: object) -> object:
        if not app.tables.recovery.completed.is_set():
            return web.json({"stage": name, "status": "recovering"}, status=503)
        problem = progress.problem() if progress is not None else None
        if problem is not None:
            return web.json({"stage": name, "status": "stalled", "reason": problem},
                            status=503)
        return web.json({"stage": name, "status": "ok"})

    @app.page("/healthz")
    async def healthz(web: object, request: object) -> object:
        return web.json({"stage": name, "status": "ok"})

    if fault_injection:  # chaos testing only: stall a partition on purpose
        @app.page("/v1/faults/{action}")
        async def faults(web: object, request: object, action: str) -> object:
            from faust.types import TP

            query = request.query  # type: ignore[attr-defined]
            tp = TP(query["topic"], int(query["partition"]))
            if action == "pause":
                app.consumer.pause_partitions({tp})
            elif action == "resume":
                app.consumer.resume_partitions({tp})
            else:
                return web.json({"error": "pause or resume"}, status=404)
            return web.json({"stage": name, action: f"{tp.topic}[{tp.partition}]"})



def watch_progress(app: faust.App, progress: Progress, sources: tuple[str, ...],
                   store: BatchStore) -> None:
    """Every 5 s, the stage's progress on the source partitions it holds (progress.py)."""
    topics = set(sources)

    @app.timer(5.0)
    async def look() -> None:
        held = {(tp.topic, tp.partition): store.inner.get(offset_key(tp.topic, tp.partition), -1)
                for tp in app.consumer.assignment() if tp.topic in topics}
        await asyncio.get_running_loop().run_in_executor(None, progress.check, held)
