"""Progress of a fit for people: rich bars on a terminal or in a notebook, plain lines in a log file.

Both are fed by the training callback's records (see :func:`flowpheno.pipeline.fit_phenotypes`
for their keys). A log file gets one line when training starts, at most one line every
:data:`LOG_INTERVAL` seconds while it runs, and one line at the end of every stage, so that
``tail -f`` on a workflow log shows a fit that runs for minutes.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Callback = Callable[[dict[str, Any]], None]

LOG_INTERVAL = 15.0
"""Seconds between two epoch lines in a log file (stage ends are always written)."""


class LazyProgress(Progress):
    """Progress bars that start drawing at the first task: a command that stops before any
    work (a bad input) prints only its one error line."""

    def __enter__(self) -> LazyProgress:
        return self

    def add_task(self, *args: Any, **kwargs: Any) -> Any:
        if not self.live.is_started:
            self.start()
        return super().add_task(*args, **kwargs)

    def stop(self) -> None:
        if self.live.is_started:  # rich prints a blank line on stop, even when nothing was drawn
            super().stop()


def progress_bars(console: Console) -> LazyProgress:
    """Bars with count, elapsed and remaining time, drawn on ``console``."""
    return LazyProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class FitBars:
    """Rich progress bars fed by the training callback: runs/stages and epochs."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.stage_task: Any = None
        self.epoch_task: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "plan":
            total_stages = record["stages"] * record["runs"]
            label = "s2 grid runs x stages" if record["runs"] > 1 else "stages"
            self.stage_task = self.progress.add_task(label, total=total_stages)
            self.epoch_task = self.progress.add_task("epochs", total=total_stages * record["epochs"])
        elif event == "epoch" and self.epoch_task is not None:
            self.progress.update(self.epoch_task, advance=1, description=f"epochs ({_losses(record)})")
        elif event == "stage" and self.stage_task is not None and record.get("stage") not in (0, "final"):
            self.progress.update(self.stage_task, advance=1)


class FitLines:
    """Plain progress lines for a log file: the plan, an epoch line at most every
    ``interval`` seconds (the first epoch's always), and every stage's end, each with the
    elapsed time and an estimate of the time left (epochs left x mean epoch time so far;
    an upper bound when ``--patience`` stops early).

    ``write`` receives one line at a time; ``clock`` returns seconds (tests pass their own).

    Example:
        >>> lines = []
        >>> ticks = iter([0.0, 0.0, 1.0, 2.0, 20.0])  # seconds read by the clock
        >>> log = FitLines(lines.append, interval=15, clock=lambda: next(ticks))
        >>> log({"event": "plan", "stages": 1, "epochs": 3, "runs": 1})
        >>> for epoch, nll in [(1, 2.91), (2, 2.85), (3, 2.80)]:  # the epoch at 2 s is not written
        ...     log({"event": "epoch", "stage": 1, "epoch": epoch, "train_nll": nll, "val_nll": nll + 0.05})
        >>> print("\\n".join(lines))
        training: 1 stages x 3 epochs; a line every 15 s and at each stage end
        stage 1/1 epoch 1/3: train NLL 2.9100, validation NLL 2.9600; 0:00:01 elapsed, about 0:00:02 left
        stage 1/1 epoch 3/3: train NLL 2.8000, validation NLL 2.8500; 0:00:20 elapsed
    """

    def __init__(
        self, write: Callable[[str], None], interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.write, self.interval, self.clock = write, interval, clock
        self.started = clock()
        self.last_epoch_line: float | None = None
        self.stages = self.epochs = self.runs = 0
        self.done = 0
        self.run = 0
        self.grid_value: Any = None
        self.last_epoch: dict[str, Any] | None = None

    @property
    def total(self) -> int:
        return self.stages * self.epochs * self.runs

    def __call__(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "plan":
            self.stages, self.epochs, self.runs = record["stages"], record["epochs"], record["runs"]
            self.started = self.clock()
            runs = f"{self.runs} s2 grid runs x " if self.runs > 1 else ""
            self._emit(
                f"training: {runs}{self.stages} stages x {self.epochs} epochs; a line every "
                f"{self.interval:g} s and at each stage end"
            )
        elif event == "epoch":
            self.done += 1
            self.last_epoch = record
            if record.get("grid_value") != self.grid_value:
                self.grid_value, self.run = record.get("grid_value"), self.run + 1
            now = self.clock()
            if self.last_epoch_line is None or now - self.last_epoch_line >= self.interval:
                self.last_epoch_line = now
                self._emit(
                    f"{self._where(record)} epoch {record.get('epoch')}/{self.stages * self.epochs or '?'}: "
                    f"{_losses(record)}; {self._times(now)}"
                )
        elif event == "stage":
            stage = record.get("stage")
            covariance = _covariance(record)
            refitted = "s2_seconds" in record or "covariance_seconds" in record  # alternating's exact step
            if stage == 0:
                self._emit(f"stage 0: initial {covariance or 'covariance'}, exact on the latents of the initial flow")
            elif stage != "final":
                losses = f"; last epoch {_losses(self.last_epoch)}" if self.last_epoch else ""
                after = f"; {covariance} refitted on all latents" if covariance and refitted else ""
                self._emit(f"{self._where(record)} done{losses}{after}; {self._times(self.clock())}")
        elif event == "grid":
            val = record.get("val_nll")
            score = f"best validation NLL {val:.4f}" if isinstance(val, (int, float)) else "no finite validation NLL"
            self._emit(f"s2 grid value {record.get('value'):g} done: {score}; {self._times(self.clock())}")

    def _where(self, record: dict[str, Any]) -> str:
        grid = f"s2 grid value {record['grid_value']:g} ({self.run}/{self.runs}), " if "grid_value" in record else ""
        return f"{grid}stage {record.get('stage')}/{self.stages or '?'}"

    def _times(self, now: float) -> str:
        elapsed = now - self.started
        text = f"{_clock(elapsed)} elapsed"
        if self.done and self.total > self.done:
            text += f", about {_clock(elapsed / self.done * (self.total - self.done))} left"
        return text

    def _emit(self, line: str) -> None:
        self.write(line)


def _losses(record: dict[str, Any] | None) -> str:
    """``train NLL 2.9134, validation NLL 2.9502, s2 0.412`` from an epoch record (keys absent are left out)."""
    record = record or {}
    parts = []
    for key, label in (("train_nll", "train NLL"), ("val_nll", "validation NLL")):
        value = record.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.4f}")
    if isinstance(record.get("s2"), (int, float)):
        parts.append(f"s2 {record['s2']:.3f}")
    return ", ".join(parts)


def _covariance(record: dict[str, Any]) -> str:
    if isinstance(record.get("s2"), (int, float)):
        return f"s2 {record['s2']:.3f}"
    if isinstance(record.get("rho"), (int, float)):
        return f"rho {record['rho']:.3f}"
    return ""


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def draws_bars(console: Console) -> bool:
    """Whether ``console`` shows live bars: a terminal, or a notebook with ipywidgets (which rich
    needs there); otherwise (a log file, a notebook without ipywidgets) plain lines are written."""
    if console.is_jupyter:
        return importlib.util.find_spec("ipywidgets") is not None
    return console.is_terminal


@contextmanager
def fit_progress(console: Console | None = None, interval: float = LOG_INTERVAL) -> Iterator[Callback]:
    """A training callback that shows the fit's progress on ``console`` (default: stderr):
    :class:`FitBars` where :func:`draws_bars`, else :class:`FitLines`."""
    console = console or Console(stderr=True)
    if draws_bars(console):
        with progress_bars(console) as bars:
            yield FitBars(bars)
    else:
        yield FitLines(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True), interval)
