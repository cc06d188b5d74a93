"""Experiment tracking plugins (issue 12, item 3): TensorBoard and W&B (offline) record the run."""

from __future__ import annotations

import json
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robust_distill.config import resolve_config
from robust_distill.core.manager import PluginHookError
from robust_distill.engine.trainer import train
from robust_distill.errors import ConfigError


def test_both_loggers_are_listed_with_their_plugins(regs) -> None:
    assert regs.loggers.names() == ["tensorboard", "wandb"]
    assert {regs.loggers.entry(n).plugin for n in ("tensorboard", "wandb")} == {"tensorboard", "wandb"}


@pytest.mark.parametrize(("logger", "module", "extra"), [("tensorboard", "torch.utils.tensorboard", "tensorboard"),
                                                         ("wandb", "wandb", "wandb")])
def test_a_missing_library_names_the_extra_before_anything_runs(regs, tiny_raw, monkeypatch: pytest.MonkeyPatch,
                                                               logger: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(ConfigError, match=rf"logging\[0\]: The {logger} logger needs .*"
                                          rf"pip install 'robust-distill\[{extra}\]'"):
        resolve_config(tiny_raw("pgd_at", logging=[logger]), regs)


def test_an_unknown_logger_lists_the_registered_ones(regs, tiny_raw) -> None:
    with pytest.raises(ConfigError, match="logging\\[0\\].key: Unknown logger 'tensorbord'. Did you mean "
                                          "'tensorboard'\\?.*Registered loggers: tensorboard, wandb"):
        resolve_config(tiny_raw("pgd_at", logging="tensorbord"), regs)


def test_a_failing_logger_names_its_plugin_and_the_run_closes_it(regs, tiny_raw, monkeypatch) -> None:
    from robust_distill_plugins.tensorboard_logger import TensorBoardLogger

    closed: list[Any] = []
    monkeypatch.setattr(TensorBoardLogger, "log_epoch", lambda self, *a: (_ for _ in ()).throw(OSError("disk full")))
    monkeypatch.setattr(TensorBoardLogger, "close", lambda self, error=None: closed.append(error))
    with pytest.raises(PluginHookError, match="'tensorboard'.*logger 'tensorboard' log_epoch.*disk full"):
        train(resolve_config(tiny_raw("pgd_at", logging=["tensorboard"]), regs))
    assert len(closed) == 1 and isinstance(closed[0], PluginHookError)


# -- reading what the trackers wrote ----------------------------------------------------------------


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["_texts"] = {t: acc.Tensors(t)[-1].tensor_proto.string_val[0].decode() for t in acc.Tags()["tensors"]}
    out["_images"] = acc.Tags()["images"]
    return out


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The records of an offline W&B run file (``run-<id>.wandb``: W&B's LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_run(output_dir: Path) -> dict[str, Any]:
    history, config, summary, runs = [], {}, {}, []
    for run_file in sorted((output_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        runs.append(run_file.parent.name)
        for rec in wandb_records(run_file):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            elif kind in ("run", "config"):  # the config comes with the run record, updates in config records
                items = rec.run.config.update if kind == "run" else rec.config.update
                config.update({i.key: json.loads(i.value_json) for i in items})
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update})
    return {"history": history, "config": config, "summary": summary, "runs": runs}


@pytest.mark.slow
def test_tensorboard_and_offline_wandb_record_config_intervals_epochs_table_and_curves(
        regs, tiny_raw, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: W&B writes the run for a later `wandb sync`
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = tiny_raw("pgd_at", logging=["tensorboard", {"key": "wandb", "kwargs": {"project": "rd-test"}}])
    raw["optim"]["log_every"] = 2
    raw["optim"]["epochs"] = 3
    raw["eval"].update(final_attacks=["clean", "pgd20"], final_n_examples=32)
    cfg = resolve_config(raw, regs)
    out = Path(raw["output_dir"])
    assert train(cfg, stop_after_epochs=2)["interrupted"]  # interrupted after 2 of 3 epochs, then resumed
    summary = train(cfg)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]

    tb = tensorboard_scalars(out / "tensorboard")
    assert tb["val/pgd20"] == [(4 * (e + 1), pytest.approx(r["val_pgd20"])) for e, r in enumerate(rows)]
    assert tb["train/loss"] == [(4 * (e + 1), pytest.approx(r["train_loss"])) for e, r in enumerate(rows)]
    assert [s for s, _ in tb["train_step/loss"]] == [2, 4, 6, 8, 10, 12]  # every 2 steps, once each (resume purged)
    assert "method: pgd_at" in tb["_texts"]["config/text_summary"]
    best = summary["final"]["best"]
    assert f"| best | {100 * best['clean']:.2f} | {100 * best['pgd20']:.2f} |" in tb["_texts"]["final/text_summary"]
    assert tb["_images"] == ["curves"] and (out / "curves.png").stat().st_size > 1000

    wb = wandb_run(out)
    run_id = (out / "wandb" / "run_id").read_text().strip()
    # the resume continued the same W&B run; wandb adds "-1" to the folder when both started in the same second
    assert len(wb["runs"]) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", r)
                                        for r in wb["runs"]), wb["runs"]
    epochs = [h for h in wb["history"] if "val/pgd20" in h]
    assert [(h["_step"], h["epoch"], h["val/pgd20"]) for h in epochs] == [
        (4 * (e + 1), e + 1, pytest.approx(r["val_pgd20"])) for e, r in enumerate(rows)]
    assert wb["config"]["method"] == "pgd_at" and wb["config"]["optim"]["log_every"] == 2
    assert wb["summary"]["final/best/clean"] == pytest.approx(best["clean"])
    assert any("curves/_type" in h for h in wb["history"]) and any("final/_type" in h for h in wb["history"])
