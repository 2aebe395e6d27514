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
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

ESTIMATE_AFTER_FRACTION = 0.03
ESTIMATE_AFTER_SECONDS = 10.0


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
