"""``deploy/local/<name>.py`` for the unit tests: not a package, so loaded by path, and
registered under its own name, as ``stack.py`` imports its neighbours."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def deploy_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / f"deploy/local/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
