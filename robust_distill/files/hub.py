"""The files of an exported model folder (timm / Hugging Face Hub layout: ``model.safetensors``,
``config.json``, ``README.md``), found locally or on the Hub, and a run's checkpoint found in its folder.

:func:`hub_file` finds a file of such a folder, local or on the Hub (``huggingface_hub.hf_hub_download`` and its
cache; ``HF_HUB_OFFLINE=1`` works from a populated cache). The ``hf-hub:`` teacher and student source
(:mod:`robust_distill_plugins.hf_hub`) builds models from these files; :mod:`robust_distill.export` writes them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from robust_distill.errors import HubError

__all__ = ["hub_file", "read_hub_config", "locate_checkpoint", "HubError", "WEIGHTS", "LEGACY_WEIGHTS", "CONFIG"]

WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "pytorch_model.bin"
CONFIG = "config.json"

def locate_checkpoint(run_or_checkpoint: str | os.PathLike[str], which: str = "best") -> tuple[Path, Path | None]:
    """``(checkpoint file, run folder or None)`` for a run folder (its ``best.pt``/``last.pt``) or a file."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        ckpt = path / f"{which}.pt"
        if not ckpt.is_file():
            found = ", ".join(sorted(p.name for p in path.glob("*.pt"))) or "none"
            raise HubError(f"{str(path)!r} has no {which}.pt (checkpoints there: {found}); give a checkpoint file, "
                           "or the run's other checkpoint (best or last).")
        return ckpt, path
    if not path.is_file():
        raise HubError(f"{str(path)!r} is neither a run folder nor a checkpoint file.")
    return path, path.parent if (path.parent / "config.yaml").is_file() else None


# -------------------------------------------------------------------------------------------------
# Finding a folder's files, local or on the Hub
# -------------------------------------------------------------------------------------------------


def hub_file(name: str, filename: str, *, required: bool = True) -> Path | None:
    """``filename`` of a local folder, or of a Hub repo (``user/repo[@revision]``) through the Hub cache."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        path = folder / filename
        if path.is_file():
            return path
        if required:
            raise HubError(f"{str(folder)!r} has no {filename} (a timm / Hub model folder has {CONFIG} and {WEIGHTS}).")
        return None
    if name.startswith((".", "/", "~")) or name.split("@")[0].count("/") != 1:
        raise HubError(f"hf-hub:{name}: not a folder here, nor a Hub repo id of the form user/repo[@revision].")
    from huggingface_hub import hf_hub_download  # huggingface_hub: optional, needed for Hub repos only

    repo, _, revision = name.partition("@")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision or None))
    except Exception as exc:  # offline without a cached copy, unknown repo, missing file
        if not required and "EntryNotFound" in type(exc).__name__:
            return None
        if not required and "offline" in str(exc).lower():
            return None  # offline: a file that is not cached may simply not exist
        raise HubError(f"hf-hub:{name}: could not get {filename} ({type(exc).__name__}: {exc}). Offline "
                       "(HF_HUB_OFFLINE=1), only repos already in the Hugging Face cache load.") from exc


def read_hub_config(name: str) -> dict[str, Any]:
    """``config.json`` of a folder or Hub repo, in timm's current form (old flat configs are converted)."""
    path = hub_file(name, CONFIG)
    assert path is not None
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise HubError(f"hf-hub:{name}: {str(path)!r} is not valid JSON ({exc}); it was cut short or edited.") from None
    if not isinstance(cfg, dict):
        raise HubError(f"hf-hub:{name}: {str(path)!r} holds a {type(cfg).__name__}, not a timm / Hub config mapping.")
    if "pretrained_cfg" not in cfg and "architecture" in cfg:  # timm's old form: the pretrained cfg at the top level
        cfg = {"architecture": cfg.pop("architecture"), "num_classes": cfg.get("num_classes"), "pretrained_cfg": cfg}
    return cfg
