"""The documentation that is generated from code is current."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_configuration_reference_matches_the_code():
    spec = importlib.util.spec_from_file_location("build_configuration", DOCS / "build_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "configuration.md").read_text() == module.render(), "run: python docs/build_configuration.py"
