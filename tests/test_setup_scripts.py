"""The README's two commands work in any order on a fresh clone (issue 12, item 1).

``scripts/test.sh`` runs tox; tox >= 4.67 writes a PEP 832 ``.venv`` redirect *file* into the project root
unless ``venv_redirect = false``, and ``scripts/setup.sh`` (the demo's set-up) then could not create its
``.venv`` folder. These tests run the real tox (the installed version, on this project's ``tox.ini``) and the
real ``setup.sh`` in a temporary copy of the project, in both orders and twice. To stay cheap, tox runs the
skip-install ``lint`` environment with no dependencies beside a default environment that ``test.sh`` would
have left (tox points its redirect at an editable environment that exists), and ``setup.sh`` installs the
project without its dependencies (``PIP_NO_DEPS``): what is tested is who owns ``.venv``, not the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV = "py311-torch214"


def _clone(dest: Path) -> Path:
    """The files the set-up scripts and tox read: a fresh clone as far as they can tell."""
    for name in ("tox.ini", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pt", "*.egg-info")
    for name in ("scripts", "robust_distill", "plugins"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without what tox or an activated virtualenv would leak into the child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOX_", "_TOX")) and k != "VIRTUAL_ENV"}
    return {**env, **extra}


def run_tox(clone: Path) -> None:
    """What ``scripts/test.sh`` leaves behind, with tox's own code deciding about ``.venv``."""
    pyvenv = clone / ".tox" / DEFAULT_ENV / "pyvenv.cfg"
    pyvenv.parent.mkdir(parents=True, exist_ok=True)
    pyvenv.touch()  # the editable default environment, as the suite's tox run leaves it
    subprocess.run([sys.executable, "-m", "tox", "-e", "lint", "-x", "testenv:lint.deps=",
                    "-x", "testenv:lint.commands_pre=", "-x", "testenv:lint.commands=python -c pass"], cwd=clone,
                   env=_env(), check=True, capture_output=True)


def run_setup(clone: Path) -> subprocess.CompletedProcess[str]:
    """The demo's set-up (``scripts/setup.sh``), without the system part and without dependencies."""
    return subprocess.run(["bash", "scripts/setup.sh", "--venv-only"], cwd=clone, text=True, capture_output=True,
                          env=_env(PYTHON=sys.executable, RD_EXTRAS="", PIP_NO_DEPS="1"), check=False)


def _venv_python(clone: Path) -> Path:
    venv = clone / ".venv"
    assert venv.is_dir() and not venv.is_symlink(), f".venv is not the project's folder: {venv}"
    return venv / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("order", ["test_then_demo", "demo_then_test"])
def test_the_two_commands_in_any_order_repeatedly(order: str, tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    steps = ["tox", "setup", "tox", "setup"] if order == "test_then_demo" else ["setup", "tox", "setup", "tox"]
    stamp_mtime = None
    for step in steps:
        if step == "tox":
            run_tox(clone)
            assert not (clone / ".venv").is_file(), "tox wrote a .venv redirect file (venv_redirect is not false)"
        else:
            done = run_setup(clone)
            assert done.returncode == 0, done.stderr
            python = _venv_python(clone)
            found = subprocess.run([str(python), "-c", "import importlib.util as u; "
                                    "print(u.find_spec('robust_distill').origin)"],
                                   capture_output=True, text=True, check=True, cwd="/").stdout
            assert Path(found.strip()).is_relative_to(clone)  # the clone's project, editable
            stamp = (clone / ".venv" / ".rd-installed").stat().st_mtime
            if stamp_mtime is not None:
                assert stamp == stamp_mtime, "the second set-up reinstalled the project"
            stamp_mtime = stamp


def _venv_dir(clone: Path, **env: str) -> tuple[str, str]:
    base = {k: v for k, v in _env().items() if k != "RD_VENV"}
    done = subprocess.run(["bash", "-c", "source scripts/venv.sh && rd_venv_dir"], cwd=clone, text=True,
                          capture_output=True, check=True, env={**base, **env})
    return done.stdout.strip(), done.stderr


def test_setup_replaces_a_tox_redirect_and_follows_any_other(tmp_path: Path) -> None:
    clone = tmp_path / "project"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "venv.sh", clone / "scripts" / "venv.sh")
    # No .venv yet: the project's folder.
    assert _venv_dir(clone)[0] == ".venv"
    # tox's redirect to one of its environments (what tox 4.67 writes): removed, the folder takes its place.
    (clone / ".venv").write_text(f".tox/{DEFAULT_ENV}\n")
    out, err = _venv_dir(clone)
    assert out == ".venv" and not (clone / ".venv").exists() and "tox's PEP 832 redirect" in err
    # A user's redirect elsewhere (relative to the project root, or absolute): followed, the file kept.
    (clone / ".venv").write_text("../shared-venv\n")
    assert _venv_dir(clone)[0] == str((tmp_path / "shared-venv").resolve())
    assert (clone / ".venv").is_file()
    (clone / ".venv").write_text(f"{tmp_path / 'abs-venv'}\n")
    assert _venv_dir(clone)[0] == str(tmp_path / "abs-venv")
    # RD_VENV wins over everything.
    assert _venv_dir(clone, RD_VENV="/opt/venv")[0] == "/opt/venv"
