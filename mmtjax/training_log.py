"""What a training run says while it runs: its log lines, metrics files and TensorBoard events
(TrainingLog), a stop on SIGTERM or Ctrl-C at the next step (StopSignal), and the first non-finite
value's step."""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmtjax import (
  parallel,
  progress,
  tensorboard_events,
)
from mmtjax.errors import Terminated


def say(message: str) -> None:
  """Console output from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


class TrainingLog:
  """Progress lines with ETA on the console, one JSON object per line in metrics.jsonl, and the
  same scalars (plus prediction panels) as TensorBoard events in <workdir>/tensorboard/."""

  def __init__(self, workdir: str, total: int, start: int, resumed: bool = False):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.total, self.start = total, start
    self.t0 = self.t_last = time.time()
    self.last_step = start
    self.t_first, self.step_first = None, start
    # A resumed run marks its start, so TensorBoard drops what was logged past the checkpoint.
    self.events = (tensorboard_events.Writer(os.path.join(workdir, tensorboard_events.SUBDIR),
                                             start if resumed else 0)
                   if jax.process_index() == 0 else None)

  def write(self, record: dict) -> None:
    if jax.process_index() == 0:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')

  def scalars(self, step: int, values: dict) -> None:
    if self.events:
      self.events.scalars(step, values)
      self.events.flush()

  def panels(self, step: int, prefix: str, panels: list) -> None:
    if self.events:
      for tag, image in panels:
        self.events.image(step, f'{prefix}/{tag}', image)
      self.events.flush()

  def close(self) -> None:
    if self.events:
      self.events.close()

  def train(self, step: int, stats: dict, episodes_per_step: int) -> None:
    now = time.time()
    rate = (step - self.last_step) * episodes_per_step / max(now - self.t_last, 1e-9)
    # The ETA counts from the first progress line on when there is one, so the compile (and,
    # after a resume, the restore) before it does not stretch the estimate; the steps left
    # are counted from where this process started.
    if self.t_first is None:
      self.t_first, self.step_first = now, step
      eta = (now - self.t0) / max(step - self.start, 1) * (self.total - step)
    else:
      eta = (now - self.t_first) / max(step - self.step_first, 1) * (self.total - step)
    self.t_last, self.last_step = now, step
    terms = ' '.join(f'{k[5:]} {v:.4f}' for k, v in stats.items() if k.startswith('loss_'))
    bar_len = 20
    filled = int(bar_len * step / self.total)
    memory = ''
    if 'memory_diversity' in stats:  # Any model that reports a style memory's state.
      memory = (f' | memory div {stats["memory_diversity"]:.3f} items '
                f'{stats.get("memory_items_source", 0):.0f}/{stats.get("memory_items_nearest", 0):.0f}')
    say(f'[{"#" * filled}{"." * (bar_len - filled)}] step {step}/{self.total} | '
        f'loss {stats["loss"]:.4f} ({terms}) | lr {stats["lr"]:.2e}{memory} | '
        f'{rate:.1f} episodes/s | ETA {progress.duration(eta)}')
    self.write({'step': step, 'time': now, 'episodes_per_s': rate, **stats})
    self.scalars(step, {f'train/{k}': v for k, v in {'episodes_per_s': rate, **stats}.items() if k != 'finite'})


def first_nonfinite(pending: list[tuple[int, dict]]) -> tuple[int, str, float] | None:
  """(step, term, value) of the first non-finite step among the unchecked steps, or None.

  Only the per-step 'finite' flags travel to the host, plus the bad step's metrics.
  """
  flags = parallel.unreplicate([stats['finite'] for _, stats in pending])
  for (done, stats), finite in zip(pending, flags):
    if finite < 1:
      host = parallel.host_scalars(stats)
      terms = sorted(k for k in host if k.startswith('loss_')) + ['loss', 'grad_norm', 'param_norm']
      name = next((k for k in terms if not math.isfinite(host[k])), 'the model state')
      return done, name, host.get(name, float('nan'))
  return None


_SIGTERM_MESSAGE = ('received SIGTERM before the first training step; nothing new was saved; '
                    'rerun the same command to continue')
_sigterm_received = False  # set by raise_on_sigterm's handler, read by raise_if_sigterm and StopSignal


def raise_on_sigterm() -> None:
  """SIGTERM raises errors.Terminated (main thread only): used outside the training loop,
  where there is nothing to save (setup) or the state is already saved (final evaluation).

  Python runs the handler between two bytecodes of the main thread, which may be inside a
  gc callback (JAX registers one) or a __del__, where an exception is printed and dropped:
  there it only sets the flag that `raise_if_sigterm` (the evaluation loop, each batch) and
  `StopSignal` (the training loop) read, so the signal is never lost nor shown as a traceback.
  """
  if threading.current_thread() is threading.main_thread():
    def handler(signum, frame):
      global _sigterm_received
      del signum
      _sigterm_received = True
      if not _drops_exceptions(frame):  # else raised at the next raise_if_sigterm, without a traceback
        raise Terminated(_SIGTERM_MESSAGE)
    signal.signal(signal.SIGTERM, handler)


def _drops_exceptions(frame) -> bool:
  """Whether an exception raised in `frame` ends printed and dropped: a gc callback or a __del__
  on the stack catches it."""
  callbacks = {getattr(cb, '__code__', None) for cb in gc.callbacks}
  while frame is not None:
    if frame.f_code in callbacks or frame.f_code.co_name == '__del__':
      return True
    frame = frame.f_back
  return False


def raise_if_sigterm() -> None:
  """Raises errors.Terminated if raise_on_sigterm's handler ran, even where its own raise was dropped."""
  if _sigterm_received:
    raise Terminated(_SIGTERM_MESSAGE)


class StopSignal:
  """Turns SIGTERM (preemption) into a flag the training loop polls.

  In a multi-process run the processes agree on the flag every
  `sync_every` steps (one tiny all-gather), so they stop at the same step.
  """

  def __init__(self, sync_every: int = 10):
    self.received: int | None = None
    self.sync_every = sync_every
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    if _sigterm_received:  # a SIGTERM during setup whose exception was dropped (see raise_on_sigterm)
      self.received = signal.SIGTERM
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.received is not None
    if step % self.sync_every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    return bool(np.any(flags))


def between_logs():
  """The part of every training step that must not wait for the device: dispatch the step,
  keep its metrics for later. On GPUs and TPUs a device-to-host transfer in it raises
  (jax.transfer_guard); the host reads the metrics at logging, checkpoint and validation steps
  only. (A CPU's arrays are host memory, unguarded: tests/conftest.py's trained_run checks the
  loop on CPU by holding a step's metrics on the device until the next step is dispatched.)"""
  return jax.transfer_guard_device_to_host('disallow_explicit')
