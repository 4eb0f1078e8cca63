"""Building and running Kizuna's image with podman on a machine without a container registry:
podman configured for this machine (runc, cgroupfs, file events, overlay storage, ulimits no
higher than the shell's), a Debian base image made locally with mmdebstrap (cached by the
hash of its inputs), then `deploy/Dockerfile` built from it with `PYTHON_IMAGE`.

`make deploy-check` uses it (tests/deploy/test_image.py); by hand:

    python -m tests.deploy.podman build    # prints the image's tag and size
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KIZUNA_CACHE_DIR", "~/.cache/kizuna")).expanduser() / "podman"
CONTAINERS_CONF = """\
[containers]
# no higher than this machine's hard limits: every run fails on setrlimit otherwise
default_ulimits = ["nofile=16384:16384", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
#: This machine's own CAs (an intercepting proxy's), copied into the base so pip trusts it.
EXTRA_CAS = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))


def environment() -> dict[str, str]:
    """The environment podman runs in: its configuration from the cache, not /etc."""
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "containers.conf").write_text(CONTAINERS_CONF)
    (CACHE / "storage.conf").write_text(STORAGE_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(CACHE / "storage.conf")}


def podman(*args: str, check: bool = True, timeout: float = 1800,
           capture: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=environment(), capture_output=capture,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}... exited {result.returncode}: "
                           f"{(result.stderr or '')[-2000:]}")
    return result


def base_image() -> str:
    """A Debian bookworm base with Python 3.11 and venv (the role python:3.11-slim plays
    elsewhere), made with mmdebstrap once per set of inputs."""
    inputs = hashlib.sha256(BASE_PACKAGES.encode())
    for ca in EXTRA_CAS:
        inputs.update(ca.read_bytes())
    tag = f"localhost/kizuna-base:{inputs.hexdigest()[:12]}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    rootfs = CACHE / f"{tag.split(':')[1]}.tar"
    if not rootfs.exists():
        hook = ('mkdir -p "$1/usr/local/share/ca-certificates" && '
                + "".join(f'cp {ca} "$1/usr/local/share/ca-certificates/" && ' for ca in EXTRA_CAS)
                + 'chroot "$1" update-ca-certificates >/dev/null && '
                'mkdir -p "$1/usr/share/man/man1"')
        staging = rootfs.with_suffix(".partial")
        subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar",
                        f"--include={BASE_PACKAGES}", f"--customize-hook={hook}", "bookworm",
                        str(staging)],
                       check=True, capture_output=True, timeout=900)
        staging.rename(rootfs)
    podman("import", "--change", 'CMD ["python3"]', str(rootfs), tag)
    return tag


def build(tag: str, extras: str = "") -> dict:
    """Build deploy/Dockerfile from the local base; its size and labels."""
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    podman("build", "-f", str(ROOT / "deploy" / "Dockerfile"), "--build-arg",
           f"PYTHON_IMAGE={base_image()}", "--build-arg", f"EXTRAS={extras}", "--build-arg",
           f"REVISION={revision}", "-t", tag, str(ROOT), timeout=3600)
    (info,) = json.loads(podman("image", "inspect", tag).stdout)
    return {"tag": tag, "size_mb": round(info["Size"] / 1e6), "labels": info["Labels"]}


def available() -> str | None:
    """None when podman, runc and mmdebstrap are here, else what is missing."""
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    return f"apt-get install {' '.join(missing)}" if missing else None


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        for tag, extras in (("kizuna:0.10.0", ""), ("kizuna:0.10.0-embedded", "embedded")):
            print(json.dumps(build(tag, extras)))
