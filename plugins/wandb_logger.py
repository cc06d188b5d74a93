"""``logging: [wandb]``: the run in Weights & Biases, files under ``<output_dir>/wandb``.

Logs the resolved config (``wandb.config``), the per-interval training diagnostics, each epoch's metrics, the
final test table (``wandb.Table`` and ``final/<checkpoint>/<attack>`` summary keys) and the accuracy curves
(image). ``WANDB_MODE=offline`` (or ``mode: offline``) works without a network: ``wandb sync`` uploads the
run later. A resumed run continues the same W&B run (its id is kept in ``<output_dir>/wandb/run_id``).
``pip install 'robust-distill[wandb]'``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from robust_distill import Logger, RunContext, final_table, hookimpl, import_optional


def _wandb() -> Any:
    return import_optional("wandb", extra="wandb", feature="The wandb logger")


class WandbLogger(Logger):
    """A W&B run.

    :param project: W&B project (default: ``WANDB_PROJECT``, else W&B's default).
    :param entity: W&B entity (team or user; default: yours).
    :param name: run name (default: the output folder's name).
    :param mode: ``online``, ``offline`` or ``disabled`` (default: ``WANDB_MODE`` or online).
    :param tags: run tags.
    """

    def __init__(self, output_dir: Path, project: str | None = None, entity: str | None = None,
                 name: str | None = None, mode: str | None = None, tags: list[str] | None = None) -> None:
        self.dir = Path(output_dir)
        self.options = {"project": project, "entity": entity, "name": name or self.dir.name, "mode": mode,
                        "tags": tags}
        self.run: Any = None

    @classmethod
    def check(cls, **options: Any) -> None:
        _wandb()

    def start(self, run: RunContext, step: int) -> None:
        wandb = _wandb()
        id_file = self.dir / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        config = yaml.safe_load((run.output_dir / "config.yaml").read_text())  # as the run saved it
        options = {k: v for k, v in self.options.items() if v is not None}
        self.run = wandb.init(dir=str(self.dir), id=run_id, resume="allow", config=config, reinit="create_new",
                              **options)
        id_file.write_text(run_id + "\n")

    def log_interval(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, summary: dict[str, Any], curves: Path | None) -> None:
        wandb = _wandb()
        attacks, rows = final_table(summary)
        for row in rows:
            for attack in attacks:
                self.run.summary[f"final/{row['checkpoint']}/{attack}"] = row.get(attack)
        logged: dict[str, Any] = {"final": wandb.Table(columns=["checkpoint", *attacks],
                                                       data=[[r["checkpoint"], *(r.get(a) for a in attacks)]
                                                             for r in rows])}
        if curves is not None:
            logged["curves"] = wandb.Image(str(curves))
        self.run.log(logged)

    def close(self, error: BaseException | None = None) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if error is not None else 0)
            self.run = None


@hookimpl
def rd_register_loggers(registry):
    registry.register(WandbLogger, name="wandb", help="Weights & Biases run (offline with WANDB_MODE=offline)")
