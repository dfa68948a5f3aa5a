"""tuner.engines sits below tuner.spec, tuner.trial and tuner.export: it imports none of tuner's
packages; all packages read one another through public names only, and no two import each other.
Every import statement counts, those inside functions too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TUNER = Path(__file__).resolve().parents[3] / "tuner"
PACKAGES = sorted(p.name for p in TUNER.iterdir() if (p / "__init__.py").exists())


def imports(package: str) -> Iterator[tuple[str, str, list[str]]]:
    """(file, module, imported names) for every absolute import in `package`."""
    for path in sorted((TUNER / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path.name, node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                yield from ((path.name, a.name, []) for a in node.names)


def other_package(module: str, package: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "tuner" and len(parts) > 1 and parts[1] in PACKAGES and parts[1] != package:
        return parts[1]
    return None


def test_engines_import_no_other_tuner_package():
    assert "engines" in PACKAGES and {"spec", "trial", "export"} <= set(PACKAGES)
    found = [(f, m) for f, m, _ in imports("engines") if other_package(m, "engines")]
    assert found == []


@pytest.mark.parametrize("package", PACKAGES)
def test_other_packages_are_read_through_their_public_names(package):
    private = [(f, m, names) for f, m, names in imports(package) if other_package(m, package)
               and (any(p.startswith("_") for p in m.split(".")[2:])
                    or any(n.startswith("_") for n in names))]
    assert private == []


def test_spec_and_export_do_not_import_trial():
    found = [(package, f, m) for package in ("spec", "export") for f, m, _ in imports(package)
             if other_package(m, package) == "trial"]
    assert found == []


def test_no_loop_between_tuners_packages():
    """Packages only import downwards: the graph of package imports (inside functions too) has no cycle."""
    graph = {package: {other_package(m, package) for _, m, _ in imports(package)} - {None}
             for package in PACKAGES}
    done: set[str] = set()

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, " -> ".join((*path, package))
        if package not in done:
            for other in sorted(graph[package]):
                visit(other, (*path, package))
            done.add(package)

    for package in PACKAGES:
        visit(package, ())
