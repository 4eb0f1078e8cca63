"""One version, told the same everywhere: the package, `kizuna --version`, the release notes
the compatibility code refers to (docs/upgrading.md), the image and the manifests."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from services import cli

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_package_is_the_latest_release_in_the_upgrade_notes() -> None:
    releases = re.findall(r"^## (\d+\.\d+)\b", (ROOT / "docs/upgrading.md").read_text(), re.M)
    assert releases, "docs/upgrading.md names no release"
    assert VERSION.rsplit(".", 1)[0] == releases[0]


def test_no_compatibility_note_names_a_release_after_the_package() -> None:
    ours = tuple(int(x) for x in VERSION.split(".")[:2])
    for path in (ROOT / "services").rglob("*.py"):
        for found in re.findall(r"(?:before|pre-)\s*(\d+)\.(\d+)\b", path.read_text()):
            assert (int(found[0]), int(found[1])) <= ours, f"{path}: {found}"


@pytest.mark.parametrize("path, pattern", [
    ("deploy/Dockerfile", r"ARG VERSION=(\S+)"),
    ("deploy/docker-compose.yml", r"image: kizuna:([\w.]+)"),
    ("deploy/compose.local.yml", r"kizuna:([\d.]+)-embedded"),
    ("deploy/k8s/base/kustomization.yaml", r'newTag: "([^"]+)"'),
    ("deploy/k8s/overlays/production/kustomization.yaml", r'newTag: "([^"]+)"'),
])
def test_the_image_and_manifests_carry_the_package_version(path: str, pattern: str) -> None:
    found = set(re.findall(pattern, (ROOT / path).read_text()))
    assert found == {VERSION}, f"{path}: {found}"


def test_kizuna_version_prints_it(capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli.importlib.metadata, "version", lambda name: VERSION)
    with pytest.raises(SystemExit) as stopped:
        cli.build_parser().parse_args(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"kizuna {VERSION}"
