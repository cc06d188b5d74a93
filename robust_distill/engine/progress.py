"""Progress of long loops: a tqdm bar on a terminal, elsewhere a plain line every N seconds or N percent.

One implementation for the three long things the project does: training epochs (steps, loss, images/s),
evaluation (each attack's batches, AutoAttack's stages) and the grid runner (runs). Where the output is not
a terminal (CI logs, ``nohup``, ``| tee``) progress bars would be silent or garbage, so :class:`Progress`
prints a line instead, e.g.::

    epoch 1/3  40% step 32/79  loss=0.155 lr=0.1  1.2e+03 img/s  elapsed 0:13  ETA 0:19

every ``RD_PROGRESS_SECONDS`` seconds (default 30) or ``RD_PROGRESS_PERCENT`` percent (default 20),
whichever comes first, and one when the loop ends; nothing in a loop's first ``RD_PROGRESS_DELAY`` seconds
(default 5: short loops stay silent). ``RD_PROGRESS=bar|lines|off`` overrides the choice (default ``auto``: a
bar on a terminal, lines elsewhere).

Updating costs a counter and a clock read; statistics may be given as a callable, evaluated only when a line
or the bar is drawn (so a loop can hand over device values without synchronising every step).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from tqdm import tqdm

__all__ = ["Progress", "progress_mode", "progress_scope", "scoped", "format_duration"]

ENV_MODE = "RD_PROGRESS"
ENV_SECONDS = "RD_PROGRESS_SECONDS"
ENV_PERCENT = "RD_PROGRESS_PERCENT"
ENV_DELAY = "RD_PROGRESS_DELAY"
MODES = ("auto", "bar", "lines", "off")

Stats = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def progress_mode(stream: IO[str] | None = None, enabled: bool = True) -> str:
    """``bar``, ``lines`` or ``off``: ``RD_PROGRESS`` if set, else a bar on a terminal and lines elsewhere."""
    if not enabled:
        return "off"
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={mode!r}: expected one of {', '.join(MODES)}.")
    if mode == "auto":
        stream = stream or sys.stderr
        return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    return mode


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r}: expected a number.") from None


def format_duration(seconds: float) -> str:
    """``0:13``, ``1:02:03``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    """Progress of a loop of ``total`` steps (``total=None``: unknown length, no percentage or ETA).

    :param total: steps the loop will take.
    :param desc: what the loop is (``epoch 1/3``, ``val epoch 1 pgd20``, ``grid runs/x``).
    :param unit: what a step is, in lines (``step``, ``batch``, ``run``).
    :param items_unit: what :meth:`update`'s ``items`` count, for the rate (``img``: images/s).
    :param enabled: ``False`` draws nothing (non-main processes).
    :param stream: where to draw (stderr).
    :param mode: ``bar``, ``lines`` or ``off``; default from :func:`progress_mode`.
    :param every_s: seconds between lines (default ``RD_PROGRESS_SECONDS`` or 30).
    :param every_pct: percent of ``total`` between lines (default ``RD_PROGRESS_PERCENT`` or 20).
    :param delay_s: no line before this many seconds (default ``RD_PROGRESS_DELAY`` or 5; a loop that ends
        sooner prints nothing).
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "step", items_unit: str = "img",
                 enabled: bool = True, stream: IO[str] | None = None, mode: str | None = None,
                 every_s: float | None = None, every_pct: float | None = None, delay_s: float | None = None) -> None:
        self.total, self.desc, self.unit, self.items_unit = total, desc, unit, items_unit
        self.stream = stream
        self.mode = mode or progress_mode(stream, enabled)
        self.every_s = every_s if every_s is not None else _env_float(ENV_SECONDS, 30.0)
        self.every_pct = every_pct if every_pct is not None else _env_float(ENV_PERCENT, 20.0)
        self.n = 0
        self.items = 0
        self.lines: list[str] = []  # every line drawn in ``lines`` mode (for tests and callers that log them)
        self._stats: Stats = {}
        self._start = time.monotonic()
        self._quiet_until = self._start + (delay_s if delay_s is not None else _env_float(ENV_DELAY, 5.0))
        self._next_t = self._start + self.every_s
        self._next_n = self._pct_step()
        self._last_n = 0
        self._last_draw = 0.0
        self._bar = None
        if self.mode == "bar":
            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream or sys.stderr,
                             unit=unit)

    def _pct_step(self) -> float:
        if not self.total or self.every_pct <= 0:
            return math.inf
        return max(1.0, self.total * self.every_pct / 100)

    # -- the loop's side ----------------------------------------------------------------------------
    def update(self, steps: int = 1, items: int = 0, stats: Stats | None = None) -> None:
        """``steps`` more steps done, covering ``items`` more items (images); ``stats`` replace the shown ones."""
        self.n += steps
        self.items += items
        if stats is not None:
            self._stats = stats
        if self.mode == "off":
            return
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(steps)
            if now - self._last_draw >= 0.5:
                self._last_draw = now
                shown = self._resolved_stats()
                if shown:
                    self._bar.set_postfix({k: _format_value(v) for k, v in shown.items()}, refresh=False)
            return
        if (now >= self._next_t or self.n >= self._next_n) and now >= self._quiet_until:
            self._line(now)

    def set_stats(self, stats: Stats) -> None:
        """Show ``stats`` (name -> value) beside the bar or line from now on."""
        self._stats = stats

    def close(self, stats: Stats | None = None) -> None:
        """End of the loop: the bar goes away; in ``lines`` mode, if lines were printed, a last one when it says
        something new (more steps, or the final ``stats``, e.g. the accuracy a stage ended with)."""
        if stats is not None:
            self._stats = stats
        if self._bar is not None:
            if stats is not None:
                self._bar.set_postfix({k: _format_value(v) for k, v in self._resolved_stats().items()})
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self.lines and (self.n > self._last_n or stats is not None):
            self._line(time.monotonic())
        self.mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- drawing ------------------------------------------------------------------------------------
    def _resolved_stats(self) -> Mapping[str, Any]:
        return self._stats() if callable(self._stats) else self._stats

    def line(self, now: float | None = None) -> str:
        """The current progress as one line (what ``lines`` mode prints)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        parts = [self.desc]
        if self.total:
            parts.append(f"{100 * self.n / self.total:3.0f}% {self.unit} {self.n}/{self.total}")
        else:
            parts.append(f"{self.unit} {self.n}")
        stats = self._resolved_stats()
        if stats:
            parts.append(" ".join(f"{k}={_format_value(v)}" for k, v in stats.items()))
        if self.items and elapsed > 0:
            parts.append(f"{self.items / elapsed:.3g} {self.items_unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and 0 < self.n < self.total:
            parts.append(f"ETA {format_duration(elapsed * (self.total - self.n) / self.n)}")
        return "  ".join(parts)

    def _line(self, now: float) -> None:
        text = self.line(now)
        self.lines.append(text)
        print(text, file=self.stream or sys.stderr, flush=True)
        self._last_n = self.n
        self._next_t = now + self.every_s
        self._next_n = self.n + self._pct_step()


# -------------------------------------------------------------------------------------------------
# Scope: lets code deep inside an evaluation (AutoAttack's stages) report under the caller's label.
# -------------------------------------------------------------------------------------------------

_SCOPE: contextvars.ContextVar[tuple[bool, str]] = contextvars.ContextVar("rd_progress_scope", default=(True, ""))


@contextlib.contextmanager
def progress_scope(enabled: bool, desc: str) -> Iterator[None]:
    """Within the block, :func:`scoped` progress is ``enabled`` and labelled ``desc``."""
    token = _SCOPE.set((enabled, desc))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def scoped(total: int | None, what: str, **kwargs: Any) -> Progress:
    """A :class:`Progress` labelled ``<scope label> <what>``, enabled as the enclosing scope says."""
    enabled, desc = _SCOPE.get()
    return Progress(total, f"{desc} {what}".strip(), enabled=enabled and kwargs.pop("enabled", True), **kwargs)
