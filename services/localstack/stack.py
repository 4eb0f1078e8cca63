"""`kizuna up`, `down` and `status`: the whole local stack in the background, idempotently."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common import schema_registry
from services.common.errors import StackError
from services.common.kafka import check_reachable, ensure_topics
from services.common.settings import Settings, mask_url
from services.localstack import registry, supervisor
from services.localstack.registry import Program

Report = Callable[[str], None]


@dataclass(frozen=True)
class ProgramStatus:
    name: str
    state: str
    pid: int
    uptime_seconds: int
    log: str


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _enabled(settings: Settings) -> list[Program]:
    return [p for p in registry.programs(settings) if p.enabled(settings)]


def _log_hint(settings: Settings, name: str) -> str:
    path = settings.log_dir / f"{name}.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"see {path}"
    errors = [ln for ln in lines if "ERROR" in ln or "Exception" in ln or "Error:" in ln]
    last = (errors or lines or ["(empty log)"])[-1].strip()
    return f"{last[:240]} (see {path})"


def _wait_ready(settings: Settings, program: Program) -> float:
    server = supervisor.rpc(settings)
    started = time.monotonic()
    deadline = started + settings.start_timeout
    while not program.ready(settings):
        state = server.getProcessInfo(program.name)["statename"]
        if state in ("FATAL", "EXITED", "STOPPED"):
            raise StackError(f"{program.name} failed to start: {_log_hint(settings, program.name)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"{program.name} not ready after {settings.start_timeout:g} s "
                f"(KIZUNA_START_TIMEOUT): {_log_hint(settings, program.name)}")
        time.sleep(0.2)
    return time.monotonic() - started


def up(settings: Settings, report: Report = print) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    programs = _enabled(settings)
    if not supervisor.running(settings):
        leftovers = supervisor.sweep(settings)
        if leftovers:
            report(f"stopped {leftovers} process(es) left behind by an earlier run")
        for env, port in registry.ports(settings).items():
            if not port_free(port):
                raise StackError(
                    f"port {port} ({env}) is already in use by another process; stop it or "
                    f"choose another port with {env}")
        if not settings.local_kafka:
            check_reachable(settings)
        argv = [(p.name, p.command(settings), p.stop_wait_seconds, p.tier) for p in programs]
        supervisor.write_conf(settings, argv)
        supervisor.start(settings)
    else:
        argv = [(p.name, p.command(settings), p.stop_wait_seconds, p.tier) for p in programs]
        supervisor.write_conf(settings, argv)
        supervisor.update(settings)
    server = supervisor.rpc(settings)
    topics_done = False
    for program in programs:
        if program.needs_topics and not topics_done:
            _create_topics(settings, report)
            topics_done = True
        state = server.getProcessInfo(program.name)["statename"]
        if state not in ("RUNNING", "STARTING"):
            server.startProcess(program.name, False)
        took = _wait_ready(settings, program)
        report(f"{program.name:<12} ready ({took:.1f} s)")
    if not topics_done:
        _create_topics(settings, report)
    report(f"stack up: KIZUNA_HOME={settings.home}, Kafka {settings.kafka_bootstrap}")


def _create_topics(settings: Settings, report: Report) -> None:
    if settings.schema_registry:
        registered = schema_registry.register(settings)
        new = sum(r.new_version for r in registered)
        report(f"{'schemas':<12} {len(registered)} subjects, {new} new version(s) registered "
               f"at {mask_url(settings.schema_registry_url)}")
    reports = ensure_topics(settings)
    created = [r.name for r in reports if r.created]
    report(f"{'topics':<12} {len(reports)} declared, {len(created)} created")
    for r in reports:
        if r.note:
            report(f"warning: topic {r.name} {r.note}")


def down(settings: Settings, report: Report = print) -> None:
    stopped = supervisor.shutdown(settings)
    swept = supervisor.sweep(settings)
    supervisor.sock_path(settings).unlink(missing_ok=True)
    if stopped or swept:
        report(f"stack down: KIZUNA_HOME={settings.home}"
               + (f" ({swept} leftover process(es) stopped)" if swept else ""))
    else:
        report("nothing running")


def leftovers(settings: Settings) -> list:
    """Processes of this stack alive without their process runner (a crashed run)."""
    return supervisor.stack_processes(settings)


def status(settings: Settings) -> list[ProgramStatus]:
    if not supervisor.running(settings):
        return []
    now = time.time()
    out = []
    for info in supervisor.rpc(settings).getAllProcessInfo():
        uptime = int(now - info["start"]) if info["statename"] == "RUNNING" else 0
        out.append(ProgramStatus(
            info["name"], info["statename"], info["pid"], uptime, info["stdout_logfile"]))
    return out
