"""supervisord as the local stack's process runner: config, start, XML-RPC control, stop."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

from services.common.errors import StackError
from services.common.settings import Settings

#: Environment variable marking every process of one stack, so `kizuna down` finds them all,
#: even when supervisord itself was killed.
STACK_MARKER = "KIZUNA_STACK"


def conf_path(settings: Settings) -> Path:
    return settings.run_dir / "supervisord.conf"


def sock_path(settings: Settings) -> Path:
    return settings.run_dir / "supervisor.sock"


def pid_path(settings: Settings) -> Path:
    return settings.run_dir / "supervisord.pid"


def _esc(value: str) -> str:
    return value.replace("%", "%%")


def write_conf(settings: Settings, programs: list[tuple[str, list[str], int, int]]) -> Path:
    """programs: (name, argv, stop-wait seconds, priority: a lower one is stopped later, and
    programs of one priority are stopped together)."""
    run, logs = settings.run_dir, settings.log_dir
    lines = [
        "[unix_http_server]", f"file={_esc(str(sock_path(settings)))}", "chmod=0700", "",
        "[supervisord]",
        f"logfile={_esc(str(logs / 'supervisord.log'))}",
        f"pidfile={_esc(str(pid_path(settings)))}",
        f"childlogdir={_esc(str(logs))}",
        f"directory={_esc(str(Path.cwd()))}",
        "logfile_maxbytes=10MB", "logfile_backups=2", "loglevel=info", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
    ]
    for name, argv, stop_wait, priority in programs:
        lines += [
            f"[program:{name}]",
            f"command={_esc(shlex.join(argv))}",
            f"priority={priority}",
            "autostart=false",
            "autorestart=unexpected",
            "startsecs=1",
            "startretries=2",
            "stopsignal=TERM",
            f"stopwaitsecs={stop_wait}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_esc(str(logs / (name + '.log')))}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=2",
            "",
        ]
    run.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    path = conf_path(settings)
    path.write_text("\n".join(lines))
    return path


def rpc(settings: Settings) -> Any:
    transport = SupervisorTransport(None, None, f"unix://{sock_path(settings)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def running(settings: Settings) -> bool:
    try:
        return rpc(settings).getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return False


def child_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # Children must resolve the same paths whatever their working directory.
    env["KIZUNA_HOME"] = str(settings.home)
    env[STACK_MARKER] = str(settings.home)
    env.setdefault("TZ", "UTC")
    # Static consumer-group members: a stage killed and restarted by supervisord takes its
    # partitions back at once (a second worker started by hand stays dynamic).
    env.setdefault("KIZUNA_WORKER_ID", "local")
    return env


def start(settings: Settings) -> None:
    """Start supervisord (it daemonizes) and wait for its control socket."""
    sock_path(settings).unlink(missing_ok=True)
    if len(str(sock_path(settings))) > 100:
        raise StackError(
            f"KIZUNA_HOME path is too long for a control socket ({sock_path(settings)}); "
            "choose a shorter KIZUNA_HOME")
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf_path(settings))]
    result = subprocess.run(cmd, env=child_environment(settings), capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"the process runner did not start: {result.stderr.strip()[:300]}")
    deadline = time.monotonic() + 20
    while not running(settings):
        if time.monotonic() > deadline:
            raise StackError(
                f"the process runner did not answer; see {settings.log_dir / 'supervisord.log'}")
        time.sleep(0.1)


def update(settings: Settings) -> None:
    """Apply a rewritten config to a running supervisord (what `supervisorctl update` does)."""
    server = rpc(settings)
    added, changed, removed = server.reloadConfig()[0]
    for name in changed + removed:
        server.stopProcessGroup(name)
        server.removeProcessGroup(name)
    for name in added + changed:
        server.addProcessGroup(name)


def supervisord_pid(settings: Settings) -> int | None:
    try:
        pid = int(pid_path(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def shutdown(settings: Settings, timeout: float = 90) -> bool:
    """Stop every program and supervisord; True when a running supervisord was stopped."""
    pid = supervisord_pid(settings)
    if not running(settings):
        return False
    with contextlib.suppress(OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        rpc(settings).shutdown()
    if pid:
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            pass  # stragglers are swept by the caller
    return True


def stack_processes(settings: Settings) -> list[psutil.Process]:
    """Every live process carrying this stack's marker (orphans of a crashed run included)."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in me:
            continue
        try:
            if proc.environ().get(STACK_MARKER) == str(settings.home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def sweep(settings: Settings, grace: float = 20) -> int:
    """Terminate, then kill, whatever of this stack is still alive; return how many."""
    procs = stack_processes(settings)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(procs)
