"""Progress lines on stderr (stdout keeps the tables): how far along, the rate and an ETA.

`Meter` is what evaluation and dataset builds use: it stays silent for work
shorter than `EVERY_S`, then says every `EVERY_S` seconds how much is done.
The rate, and so the ETA, counts from the end of the first unit, so a first
batch that compiles (or a pool of readers that starts) does not stretch it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

EVERY_S = 20.0  # work running longer prints a progress line this often


def line(message: str) -> None:
  """One progress line on stderr, from process 0 only."""
  import jax  # Late: a dataset build's progress does not need JAX started.
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


class Meter:
  """`update(done)` after each unit of `total`; prints '<label>: done/total <unit>, rate, ETA' lines."""

  def __init__(self, label: str, total: int, unit: str, *, every_s: float | None = None,
               clock: Callable[[], float] = time.perf_counter, say: Callable[[str], None] = line):
    self.label, self.total, self.unit = label, total, unit
    self.every_s = EVERY_S if every_s is None else every_s
    self._clock, self._say = clock, say
    self._start = clock()
    self._first: tuple[float, int] | None = None  # (time, done) at the end of the first unit
    self._last = self._start

  def update(self, done: int) -> None:
    now = self._clock()
    if self._first is None:
      self._first = (now, done)
      return
    if now - self._last < self.every_s or done >= self.total:
      return
    self._last = now
    t0, d0 = self._first
    rate = (done - d0) / max(now - t0, 1e-9)
    self._say(f'{self.label}: {done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s, '
              f'ETA {duration((self.total - done) / max(rate, 1e-9))}')
