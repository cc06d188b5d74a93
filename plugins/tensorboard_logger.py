"""``logging: [tensorboard]``: the run in TensorBoard (``torch.utils.tensorboard``), under ``<output_dir>/tensorboard``.

Logs the resolved config (as text), the per-interval training diagnostics (``train_step/*``, ``lr``), each
epoch's metrics (``train/*``, ``val/*``, ``time/*``), the final test table (text) and the accuracy curves
(image). Resuming purges the events past the resume point. ``pip install 'robust-distill[tensorboard]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robust_distill import Logger, RunContext, hookimpl, import_optional, markdown_final_table


def _summary_writer() -> Any:
    return import_optional("torch.utils.tensorboard", extra="tensorboard", feature="The tensorboard logger",
                           package="tensorboard").SummaryWriter


class TensorBoardLogger(Logger):
    """TensorBoard event files.

    :param log_dir: where the event files go (default ``<output_dir>/tensorboard``).
    :param flush_secs: seconds between writes to disk.
    """

    def __init__(self, output_dir: Path, log_dir: str | None = None, flush_secs: int = 30) -> None:
        self.log_dir = Path(log_dir) if log_dir else Path(output_dir) / "tensorboard"
        self.flush_secs = flush_secs
        self.writer: Any = None

    @classmethod
    def check(cls, **options: Any) -> None:
        _summary_writer()

    def start(self, run: RunContext, step: int) -> None:
        # resumed after `step` steps: hide what an interrupted attempt logged beyond them
        self.writer = _summary_writer()(str(self.log_dir), purge_step=step + 1 if step else None,
                                        flush_secs=self.flush_secs)
        text = (run.output_dir / "config.yaml").read_text()  # the resolved config, as the run saved it
        self.writer.add_text("config", "```yaml\n" + text + "```", step)

    def log_interval(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.log_interval(step, metrics)

    def finish(self, summary: dict[str, Any], curves: Path | None) -> None:
        self.writer.add_text("final", markdown_final_table(summary))
        if curves is not None:
            from matplotlib.image import imread  # matplotlib: loaded when the curves are logged

            self.writer.add_image("curves", imread(curves)[..., :3], dataformats="HWC")

    def close(self, error: BaseException | None = None) -> None:
        if self.writer is not None:
            self.writer.close()


@hookimpl
def rd_register_loggers(registry):
    registry.register(TensorBoardLogger, name="tensorboard", help="TensorBoard event files (torch.utils.tensorboard)")
