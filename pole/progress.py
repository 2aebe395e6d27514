"""The progress bars of the pole command: one look and one behaviour for all of them.

Each bar shows its overall percentage from the moment it opens, and the time left only once the
estimate means something: extrapolated from the first seconds or the first percent (spent loading
data and warming up, or inside a stage that reports rarely), it swings between minutes and days.
While a bar is open, log records of WARNING and above, Python's warnings among them, are printed
above it, and INFO records not at all: a line printed between two redraws of the bar breaks it up.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

ESTIMATE_AFTER_FRACTION = 0.03
ESTIMATE_AFTER_SECONDS = 10.0
FRACTION_STEPS = 1000  # the steps of a bar driven by a fraction done
DESCRIPTION_WIDTH = 34  # the widest stage name and its percentage


def time_left(done: float, total: float, elapsed: float, initial: float = 0) -> str:
    """The text ", 12:34 left", at the pace kept since the bar opened at `initial`, once
    ESTIMATE_AFTER_FRACTION of the work left then and ESTIMATE_AFTER_SECONDS have passed; "" before
    that, and once done."""
    todo = total - initial
    fraction = (done - initial) / todo if todo > 0 else 0.0
    if fraction < ESTIMATE_AFTER_FRACTION or elapsed < ESTIMATE_AFTER_SECONDS or fraction >= 1:
        return ""
    return f", {tqdm.format_interval(elapsed * (1 - fraction) / fraction)} left"


class ProgressBar(tqdm):
    """A tqdm bar whose format may use {time_left} (see `time_left`)."""

    @property
    def format_dict(self):
        values = super().format_dict
        left = time_left(values["n"], values["total"], values["elapsed"], values["initial"])
        return {**values, "time_left": left}


@contextmanager
def progress_bar(total: int, description_width: int = 0) -> Iterator[ProgressBar]:
    """A bar on stderr: the description (padded or cut to `description_width`; none when 0), the
    percentage, the bar and the time; postfix values (`set_postfix`, such as a loss) follow the time."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    description = f"{{desc:<{description_width}.{description_width}}} " if description_width else ""
    bar_format = description + "{percentage:3.0f}%|{bar}| {elapsed} elapsed{time_left}{postfix}"
    try:
        with logging_redirect_tqdm(), ProgressBar(total=total, file=sys.stderr, bar_format=bar_format) as bar:
            yield bar
    finally:
        logging.captureWarnings(False)


@contextmanager
def state_bar() -> Iterator[Callable[[dict], None]]:
    """A bar following what the API says of a job, a prediction run or a dataset being checked: `show(state)`
    with each answer draws its stage and the stage's own fraction (its state when it has no stage) and its
    overall progress."""
    with progress_bar(FRACTION_STEPS, DESCRIPTION_WIDTH) as bar:

        def show(state: dict) -> None:
            stage = f"{state['stage']} {state['stage_progress']:4.0%}" if state.get("stage") else state["state"]
            bar.set_description_str(stage, refresh=False)
            bar.n = round(FRACTION_STEPS * state["progress"])
            bar.refresh()

        yield show


@contextmanager
def transfer_bar(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A bar for a file going to or coming from the server: `show(done, total)` after each chunk, in bytes
    (total None when the server did not say); redrawn at tqdm's pace, not at every chunk."""
    with progress_bar(FRACTION_STEPS, DESCRIPTION_WIDTH) as bar:
        bar.set_description_str(description, refresh=False)

        def show(done: int, total: int | None) -> None:
            sizes = [tqdm.format_sizeof(n, "B", 1024) for n in (done, total) if n is not None]
            bar.set_postfix_str(" of ".join(sizes), refresh=False)
            bar.update(round(FRACTION_STEPS * done / total) - bar.n if total else 0)

        yield show
