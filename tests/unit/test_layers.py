"""The package layers: stages import `services.domain` and `services.common`, never another
stage; the domain imports nothing of Kizuna but itself."""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"
STAGES = ("ingest", "sessionizer", "engagement_scorer", "alerting", "warehouse")


def kizuna_imports(path: Path, roots: tuple[str, ...] = ("services.",)) -> set[str]:
    """The `services.<package>` modules a file imports, anywhere in it (function-level
    imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith(roots))
    return found


def owner(module: str) -> str:
    return module.split(".")[1]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage: str) -> None:
    crossings = sorted(f"{path.relative_to(SERVICES.parent)} imports {module}"
                       for path in (SERVICES / stage).rglob("*.py")
                       for module in kizuna_imports(path)
                       if owner(module) in STAGES and owner(module) != stage)
    assert crossings == []


def test_the_domain_depends_on_nothing_of_kizuna() -> None:
    crossings = sorted(f"{path.name} imports {module}"
                       for path in (SERVICES / "domain").rglob("*.py")
                       for module in kizuna_imports(path) if owner(module) != "domain")
    assert crossings == []


def test_common_depends_on_no_stage() -> None:
    crossings = sorted(f"{path.name} imports {module}"
                       for path in (SERVICES / "common").rglob("*.py")
                       for module in kizuna_imports(path) if owner(module) in STAGES)
    assert crossings == []


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    """The scan itself: a function-level import of another stage is found."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from services.sessionizer.app import main\n"
                      "    import services.alerting.carts\n")
    assert kizuna_imports(source) == {"services.sessionizer.app",
                                      "services.sessionizer.app.main",
                                      "services.alerting.carts"}


def test_every_contract_section_the_code_cites_is_in_docs_contract() -> None:
    root = SERVICES.parent
    headings = set(re.findall(r"^## (\d+)\. ", (root / "docs/contract.md").read_text(), re.M))
    cited = {(path.relative_to(root), n)
             for folder in ("services", "tests", "benchmarks")
             for path in (root / folder).rglob("*.py")
             for group in re.findall(r"contract sections? ([\d, and]+)", path.read_text())
             for n in re.findall(r"\d+", group)}
    assert cited and {n for _, n in cited} <= headings, sorted(
        (str(p), n) for p, n in cited if n not in headings)


def test_the_architecture_page_names_modules_that_exist() -> None:
    root = SERVICES.parent
    page = (root / "docs/architecture.md").read_text()
    named = set(re.findall(r"`((?:services|deploy)/[\w/.]+)`", page))
    assert len(named) > 15
    assert [n for n in sorted(named) if not (root / n).exists()] == []


def module_graph() -> dict[str, set[str]]:
    """Each module under services/ and benchmarks/ -> the modules of those it imports
    (function-level imports included, a package standing for its __init__)."""
    modules = {}
    for folder in ("services", "benchmarks"):
        for path in (SERVICES.parent / folder).rglob("*.py"):
            parts = path.relative_to(SERVICES.parent).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: {target for target in kizuna_imports(path, ("services.", "benchmarks."))
                   if target in modules and target != name}
            for name, path in modules.items()}


def test_no_module_imports_itself_back() -> None:
    """No import cycle in services/ or benchmarks/: each module reads top-down, and a module
    can be understood (and tested) without the ones that use it."""
    graphlib.TopologicalSorter(module_graph()).prepare()


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = module_graph()
    graph["services.domain.weights"].add("services.alerting.app")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
