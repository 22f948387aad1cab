"""Progress of a long loop: items done out of a total, their rate and an ETA, as one line.

::

  progress = Progress('features train', total=600, unit='clips', every_s=30.0)
  for batch in batches:
    ...
    progress.update(len(batch))  # logs a line at most every 30 s, and at the last item
  logging.info(progress.summary())

A line reads
``features train: 150/600 clips (25.0%) | 48.2 clips/s | elapsed 0:00:04 | ETA 0:00:09``
and the summary ``features train: 600 clips in 12.6 s (48.2 clips/s)``.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Sequence

from absl import logging


def format_duration(seconds: float) -> str:
  """``H:MM:SS`` of ``seconds`` (rounded); ``?`` when unknown (nan or inf)."""
  if math.isnan(seconds) or math.isinf(seconds):
    return '?'
  return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
  """Counts items done out of ``total`` and reports their rate and an ETA.

  ``update(n)`` counts ``n`` more items and, unless ``log`` is None, logs
  :meth:`line` when it is :meth:`due`: ``every_s`` seconds after the last line
  (or the start), and once all items are done. A caller that reports lines
  itself (e.g. from a callback it is handed) asks :meth:`due` and prints
  :meth:`line`. Subclasses add fields to the line through :meth:`details`.

  The rate counts timed items only, over the time since the timing started:
  the items of the first ``warmup_updates`` updates are not timed and the clock
  starts after them (a first batch that compiled), nor are those counted with
  ``update(n, timed=False)`` (work resumed from an earlier run). The ETA is the
  items left at that rate (nan before any timed item).

  Args:
    what: the line's prefix, e.g. 'features train'.
    total: items to do.
    unit: what an item is, plural ('clips', 'videos').
    every_s: seconds between two logged lines.
    log: called with each line (default ``absl.logging.info``); None: log nothing.
    warmup_updates: leading updates whose items are not timed.
    clock: seconds as a float (default ``time.perf_counter``; a fake one in tests).
  """

  def __init__(
    self,
    what: str,
    total: int,
    *,
    unit: str = 'items',
    every_s: float = 5.0,
    log: Callable[[str], None] | None = logging.info,
    warmup_updates: int = 0,
    clock: Callable[[], float] = time.perf_counter,
  ):
    self.what, self.total, self.unit, self.every_s, self.log = what, total, unit, every_s, log
    self.done = 0  # items done
    self.untimed = 0  # of done: not timed (warm-up updates, timed=False)
    self._clock = clock
    self._warmup_left = warmup_updates
    self.created_time = self.start_time = self._last_line = clock()

  def update(self, n: int = 1, *, timed: bool = True) -> None:
    """Counts ``n`` more items done; logs a line when one is due (and ``log`` is set)."""
    self.done += n
    if self._warmup_left > 0:
      self._warmup_left -= 1
      self.untimed += n
      self.start_time = self._last_line = self._clock()  # the rate counts from here
      return
    if not timed:
      self.untimed += n
    if self.log is not None and self.due():
      self.log(self.line())

  def due(self, every_s: float | None = None) -> bool:
    """Whether a line is due (``every_s``, default ``self.every_s``, seconds after the last
    one, or all done); True also marks one as reported now."""
    now = self._clock()
    if now - self._last_line >= (self.every_s if every_s is None else every_s) or self.done >= self.total:
      self._last_line = now
      return True
    return False

  @property
  def elapsed(self) -> float:
    """Seconds since the timing started (after the warm-up updates)."""
    return self._clock() - self.start_time

  @property
  def wall(self) -> float:
    """Seconds since this progress was made."""
    return self._clock() - self.created_time

  @property
  def timed(self) -> int:
    """Items done and timed."""
    return self.done - self.untimed

  @property
  def rate(self) -> float:
    """Timed items per second."""
    return self.timed / max(self.elapsed, 1e-9)

  @property
  def eta(self) -> float:
    """Seconds left at :attr:`rate`; nan before the first timed item."""
    return (self.total - self.done) / self.rate if self.timed > 0 else float('nan')

  def details(self) -> Sequence[str]:
    """Fields a subclass adds to :meth:`line`, after the rate."""
    return ()

  def line(self) -> str:
    """``<what>: done/total <unit> (%) | <rate> <unit>/s | <details> | elapsed H:MM:SS | ETA H:MM:SS``."""
    return ' | '.join(
      [
        f'{self.what}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.1f}%)',
        f'{self.rate:.1f} {self.unit}/s',
        *self.details(),
        f'elapsed {format_duration(self.wall)}',
        f'ETA {format_duration(self.eta)}',
      ]
    )

  def summary(self, details: str = '', rate_note: str = '') -> str:
    """The closing line: ``<what>: <done> <unit><details> in <wall> s (<rate> <unit>/s<rate_note>)``;
    without the rate when no item was timed."""
    rate = f' ({self.rate:.1f} {self.unit}/s{rate_note})' if self.timed > 0 else ''
    return f'{self.what}: {self.done} {self.unit}{details} in {self.wall:.1f} s{rate}'


class SplitProgress(Progress):
  """Progress over the videos of several splits that logs nothing itself (its owner prints
  :meth:`line` when :meth:`due`): the line names the split worked on, ``'<verb> <split>'``, and it
  keeps count of the unreadable videos skipped and their paths."""

  def __init__(self, verb: str, total: int):
    super().__init__(verb, total, unit='videos', log=None)
    self.verb = verb
    self.skipped = 0
    self.skipped_paths: list[str] = []
    self.split = ''

  @property
  def split(self) -> str:
    """The split being worked on."""
    return self._split

  @split.setter
  def split(self, split: str) -> None:
    self._split = split
    self.what = f'{self.verb} {split}'


def skipped_lines(paths: Sequence[str], limit: int = 20) -> list[str]:
  """The lines naming skipped (unreadable) videos: the first `limit` paths, then how many more."""
  lines = [f'  skipped (unreadable): {p}' for p in paths[:limit]]
  if len(paths) > limit:
    lines.append(f'  ... and {len(paths) - limit} more')
  return lines
