"""The example third-party distribution, pip-installed, is discovered through its entry point and usable."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "example_third_party"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which the example plugin is installed (pip-installed into a target folder)."""
    env = {**os.environ, "RD_DISABLE_PLUGIN_AUTOLOAD": "0", "OMP_NUM_THREADS": "1"}
    if importlib.util.find_spec("rd_example_plugin") is None:  # the tox `plugins` env installs it for real
        target = tmp_path_factory.mktemp("site")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--target", str(target), str(EXAMPLE)],
                       check=True, capture_output=True, text=True, timeout=300)
        env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def rd(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "robust_distill", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_plugins_command_lists_the_installed_plugin(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = rd(["plugins"], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "rd_example_plugin.plugin" in out.stdout and "rd-example-plugin 0.1.0 (third-party)" in out.stdout
    method_line = next(line for line in out.stdout.splitlines() if line.strip().startswith("adaad_jsd"))
    assert "[example_jsd; rd-example-plugin 0.1.0]" in method_line


def test_autoload_off_hides_it(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = rd(["plugins"], {**plugin_env, "RD_DISABLE_PLUGIN_AUTOLOAD": "1"}, tmp_path)
    assert out.returncode == 0 and "adaad_jsd" not in out.stdout


def test_the_plugin_method_trains_from_a_yaml_config(plugin_env: dict[str, str], tiny_raw, tmp_path: Path) -> None:
    raw = tiny_raw("adaad_jsd", teacher=True)
    raw["optim"]["epochs"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = rd(["train", "c.yaml"], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    ckpt = torch.load(Path(raw["output_dir"]) / "last.pt", weights_only=True)
    assert ckpt["config"]["outer_loss"]["key"] == "jsd" and ckpt["epoch"] == 1
