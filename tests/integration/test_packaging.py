"""Kizuna installed as a user installs it: the wheel built from this checkout, in a fresh
virtualenv outside it, run from another directory, with no checkout in sight: `kizuna up`,
a small `kizuna demo` and `kizuna query` work (schemas, migrations, queries, weights and the
local broker's Maven files come with the wheel).

The wheel's dependencies are the suite's own (its virtualenv's site-packages is added to the
fresh one's path, after the wheel itself): the test is about what the wheel carries, not
about PyPI.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from tests.conftest import stack_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installed_elsewhere_runs_a_demo(tmp_path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("kizuna-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], check=True, capture_output=True, text=True).stdout
    # the suite's packages for the dependencies, after the wheel (not its editable finder)
    Path(site.strip(), "zz-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    elsewhere = Path(tempfile.mkdtemp(prefix="kz-wheel-", dir="/tmp"))
    env = {**stack_env(elsewhere / "home"), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    kizuna = [str(venv / "bin" / "kizuna")]

    def run(*args: str, timeout: float = 600) -> str:
        result = subprocess.run([*kizuna, *args], cwd=elsewhere, env=env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, f"kizuna {args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    try:
        where = subprocess.run([str(python), "-c", "import services; print(services.__file__)"],
                               cwd=elsewhere, capture_output=True, text=True).stdout
        assert where.startswith(str(venv)), where  # the wheel's code, not the checkout's
        out = run("demo", "--customers", "40", "--days", "5", "--out", "demo", timeout=900)
        assert "HTML report" in out and (elsewhere / "demo" / "report.html").exists()
        tables = run("query", "SELECT name FROM system.tables WHERE database = 'kizuna' "
                              "ORDER BY name", "--format", "csv")
        assert {"touchpoints", "sessions", "customer_profiles", "alerts"} <= {
            row["name"] for row in csv.DictReader(io.StringIO(tables))}
        rows = run("query", "SELECT count() AS n FROM kizuna.sessions", "--format", "csv")
        assert int(next(csv.DictReader(io.StringIO(rows)))["n"]) > 0
    finally:
        subprocess.run([*kizuna, "down"], cwd=elsewhere, env=env, capture_output=True,
                       timeout=120)
        shutil.rmtree(elsewhere, ignore_errors=True)
