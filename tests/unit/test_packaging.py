"""The wheel carries every package and every file the code reads (pyproject.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from services.common import resources

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_and_data_directory_is_in_the_wheel() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {".".join(p.relative_to(ROOT).parent.parts)
            for p in ROOT.glob("services/**/__init__.py")}
    assert code <= set(tool["packages"]), code - set(tool["packages"])
    mapped = tool["package-dir"]
    for package, directory in resources.DIRECTORIES.items():
        assert mapped[package] == directory and package in tool["package-data"]
        for sub in (ROOT / directory).rglob("*"):
            if sub.is_dir() and sub.name != "__pycache__":
                name = f"{package}.{'.'.join(sub.relative_to(ROOT / directory).parts)}"
                assert mapped.get(name) == str(sub.relative_to(ROOT)), name
    for package, patterns in tool["package-data"].items():
        where = ROOT / mapped.get(package, package.replace(".", "/"))
        for path in where.iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc", ".md"):
                assert any(path.match(p) for p in patterns), f"{path} not in the wheel"
