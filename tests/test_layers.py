"""The three layers import downwards only: core (``fresco_plugin/``) <- integrations (``integrations/``) <- tools
(``tools/``). Read from the source with ``ast``, so a lazy import inside a function counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # folder: (installed package, packages it must not import)
    "fresco_plugin": ("fresco_plugin", ("fresco_plugin.integrations", "fresco_plugin.tools")),
    "integrations": ("fresco_plugin.integrations", ("fresco_plugin.tools",)),
    "tools": ("fresco_plugin.tools", ()),
}
# what the core may import at module level besides the standard library and itself
CORE_THIRD_PARTY = {"torch", "numpy"}


def _imports(path: Path, package: str) -> list[tuple[str, bool]]:
    """(absolute module, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names = [f"{module}.{alias.name}" for alias in node.names] if not node.level or not node.module else []
            found += [(name, id(node) in top_level) for name in [module, *names]]
    return found


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below(folder):
    package, forbidden = LAYERS[folder]
    offenders = [f"{path.name}: {module}" for path in _sources(folder) for module, _ in _imports(path, package)
                 if any(module == f or module.startswith(f + ".") for f in forbidden)]
    assert _sources(folder) and not offenders, offenders


def test_the_core_imports_only_torch_and_numpy_at_module_level():
    import sys

    offenders = [f"{path.name}: {module}" for path in _sources("fresco_plugin")
                 for module, top in _imports(path, "fresco_plugin")
                 if top and module.split(".")[0] not in CORE_THIRD_PARTY | {"fresco_plugin", "__future__"}
                 and module.split(".")[0] not in sys.stdlib_module_names]
    assert not offenders, offenders


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """Guard for the tests above: an upward import, absolute or relative, is found."""
    source = tmp_path / "upward.py"
    source.write_text("from ..tools import bench\n\ndef f():\n    import fresco_plugin.integrations.stack\n")
    modules = [module for module, _ in _imports(source, "fresco_plugin.integrations")]
    assert "fresco_plugin.tools" in modules
    source.write_text("def f():\n    from fresco_plugin.integrations import stack\n")
    assert ("fresco_plugin.integrations", False) in _imports(source, "fresco_plugin")
