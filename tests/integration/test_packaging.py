"""The wheel holds every module and data file of the four packages: a production install
(``pip install .``, not the editable install of the venv) imports and reads the same files
as the checkout. Before the package list came from ``packages.find``, the wheel lacked
``streams.faust_glue``, so ``streams.app`` could not be imported from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "producers", "consumers", "streams")


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", *paths], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line]


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    source = tmp_path / "src"  # the tracked files only: no build/ left over from a build
    for name in [*tracked(*PACKAGES), "pyproject.toml", "README.md"]:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("consent_stream-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())

    missing = sorted(set(tracked(*PACKAGES)) - in_wheel)

    assert missing == []
    assert "streams/faust_glue/transport.py" in in_wheel
