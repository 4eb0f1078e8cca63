"""The faust stage helpers that guard at-least-once."""

from __future__ import annotations

import subprocess
import sys


def test_a_failed_batch_stops_the_process_before_faust_can_acknowledge_it() -> None:
    # faust acknowledges a take_events batch in a `finally`, even when the agent raised:
    # fail_stop must end the process first, and a `finally` after it must never run.
    script = """
import logging, sys
from services.common.faust_stage import fail_stop
logging.basicConfig(stream=sys.stderr)
try:
    try:
        raise RuntimeError("producing failed")
    except RuntimeError as exc:
        fail_stop("sessionizer", exc)
finally:
    print("ACKED")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 70
    assert "ACKED" not in result.stdout
    assert "stopping before it is acknowledged" in result.stderr
    assert "producing failed" in result.stderr


def test_the_changelog_store_writes_what_faust_recovers() -> None:
    import orjson

    from services.common.stage_state import ChangelogStore

    class Table:  # the two attributes ChangelogStore uses
        data: dict = {}

        class changelog_topic:  # noqa: N801
            @staticmethod
            def get_topic_name() -> str:
                return "app-profiles-changelog"

    sent = []
    store = ChangelogStore(Table(), lambda *args: sent.append(args))
    store.partition = 3
    store["c:C1"] = {"runs": []}
    del store["c:C1"]
    assert sent == []  # nothing before the batch's outputs are in Kafka
    store.write_changelog()
    assert sent == [("app-profiles-changelog", orjson.dumps({"runs": []}), b'"c:C1"', 3),
                    ("app-profiles-changelog", None, b'"c:C1"', 3)]
    assert "c:C1" not in store


def test_events_the_state_already_took_are_skipped_on_redelivery() -> None:
    from types import SimpleNamespace

    from services.common.stage_state import mark_seen, unseen

    def event(topic: str, partition: int, offset: int) -> SimpleNamespace:
        return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition,
                                                       offset=offset))

    store: dict = {}
    batch = [event("raw", 2, 10), event("raw", 2, 11), event("handoff", 2, 4)]
    assert unseen(store, batch) == batch
    mark_seen(store, batch)
    # the same batch redelivered after a crash, with newer events behind it
    again = [*batch, event("raw", 2, 12), event("handoff", 2, 5)]
    assert [(e.message.topic, e.message.offset) for e in unseen(store, again)] == [
        ("raw", 12), ("handoff", 5)]


def test_a_stop_in_the_middle_of_a_batch_finishes_it_outputs_before_the_changelog() -> None:
    # faust cancels the agent on a stop; the cancel lands in the awaited flush of a processed
    # batch. The stage finishes that batch blocking (outputs, then changelog, each once) so
    # that faust may acknowledge it and leave the group cleanly.
    import asyncio

    from services.common.faust_stage import Stage
    from services.common.stage_state import BatchStore, ChangelogStore

    log: list[str] = []

    class Outbox:
        held = None

        def begin(self) -> None:
            self.held = []

        def commit(self) -> None:
            held, self.held = self.held, None
            for topic in held:
                self.produce(topic, b"")

        def rollback(self) -> None:
            self.held = None

        def produce(self, topic, value, key=None, partition=-1) -> None:
            if self.held is not None:
                self.held.append(topic)
            else:
                log.append(f"produce {topic}")

        def flush(self) -> None:
            log.append("flush")

        async def flush_async(self) -> None:
            await asyncio.sleep(3600)  # a slow broker: the stop comes meanwhile

    class Table:
        data: dict = {}

        class changelog_topic:  # noqa: N801
            @staticmethod
            def get_topic_name() -> str:
                return "changelog"

    class Message:
        topic, partition, offset = "raw", 0, 7

    class Event:
        message = Message()

    outbox = Outbox()
    store = BatchStore(ChangelogStore(Table, outbox.produce), copy_reads=True)
    stage = Stage.__new__(Stage)
    stage.store, stage.outbox, stage.drop_index = store, outbox, []
    stage.name, stage.source, stage.batch_size, stage.batch_wait = "test", None, 10, 0.01
    agents: list = []

    class App:  # faust's app.agent: the stage registers its agent function here
        @staticmethod
        def agent(source, name, concurrency):  # noqa: ANN001, ANN205
            return lambda fn: agents.append(fn) or fn

    class Stream:  # one batch, then a quiet topic
        @staticmethod
        async def take_events(n, within):  # noqa: ANN001, ANN205
            yield [Event()]
            await asyncio.sleep(3600)

    def handle(partition: int, events: list) -> None:
        outbox.produce("alerts", b"{}")
        store["customer"] = {"n": 1}

    stage.app = App()
    stage.agent(handle)
    (agent,) = agents

    async def stop_mid_batch() -> None:
        task = asyncio.ensure_future(agent(Stream()))  # the agent itself, as faust runs it
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return  # the agent let the cancel through, for faust to stop
        raise AssertionError("the agent swallowed the cancel")

    asyncio.run(stop_mid_batch())
    # the agent finished the batch itself: the outputs, then the state's two records (the
    # customer and the offset the stage has taken), each once
    assert log == ["produce alerts", "flush", "produce changelog", "produce changelog",
                   "flush"]
    stage.finish_blocking()  # again: nothing more is written
    assert log.count("produce changelog") == 2


def test_faust_private_names_are_used_by_the_stage_adapter_only() -> None:
    # The one private name Kizuna relies on (`faust.streams._current_event`: which event's
    # partition a table write's changelog goes to) is used in faust_stage.py alone.
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "services"
    private = re.compile(r"from faust[\w.]* import [^\n]*\b_[a-z]\w*|faust[\w.]*\._[a-z]\w*")
    users = {str(p.relative_to(root)) for p in root.rglob("*.py") if private.search(p.read_text())}
    assert users == {"common/faust_stage.py"}


def test_the_private_faust_api_the_adapter_sets_is_what_faust_tables_read() -> None:
    # Pinned with faust-streaming's minor version (pyproject.toml): if a release renames it or
    # tables stop reading it, table writes would go to the wrong changelog partition.
    import faust
    import faust.tables.base
    from faust.streams import current_event

    from services.common.faust_stage import use_partition

    assert faust.__version__.startswith("0.15.")
    assert faust.tables.base.current_event is current_event

    class Event:  # what faust keeps a weak reference to
        pass

    event = Event()
    use_partition(event)  # type: ignore[arg-type]
    assert current_event() is event
