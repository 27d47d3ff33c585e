"""TensorBoard event files without TensorFlow: scalars and images, for `tensorboard --logdir`.

Written with the `tensorboard` package's own pure-Python EventFileWriter (the
writer PyTorch's SummaryWriter uses) and its protobufs; the same package
reads the files back (EventAccumulator) and serves them (`tensorboard
--logdir`), so one library, which anyone viewing the logs installs anyway,
covers writing, reading and viewing. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

SUBDIR = 'tensorboard'


class Writer:
  """Appends events to <logdir>, in a new event file per writer.

  start_step > 0 (a resumed run) first writes TensorBoard's session-start
  marker at that step, so the reader drops what an interrupted run had
  logged past its last checkpoint (as metrics.jsonl is truncated).
  """

  def __init__(self, logdir: str, start_step: int = 0):
    os.makedirs(logdir, exist_ok=True)
    self.logdir = logdir
    _wait_for_a_later_second(logdir)
    self._writer = EventFileWriter(logdir)
    if start_step:  # TensorBoard drops the earlier events at or past the marker's step.
      self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(start_step) + 1,
                                             session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def _add(self, step: int, values: list) -> None:
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One scalar per tag, e.g. {'train/loss': 0.7, 'train/lr': 2e-3}."""
    self._add(step, [summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])

  def image(self, step: int, tag: str, image: Image.Image | np.ndarray) -> None:
    """An RGB image (PIL or uint8 [H, W, 3]), stored as PNG."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    image = image.convert('RGB')
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    self._add(step, [summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
        height=image.height, width=image.width, colorspace=3, encoded_image_string=buffer.getvalue()))])

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _wait_for_a_later_second(logdir: str) -> None:
  """Readers order a logdir's event files by name, which starts with the creation second: a new
  file must not share its second with an older one (a run restarted within one second)."""
  seconds = [int(parts[3]) for name in os.listdir(logdir) if name.startswith('events.out.tfevents.')
             and len(parts := name.split('.')) > 4 and parts[3].isdigit()]
  while seconds and time.time() < max(seconds) + 1:
    time.sleep(0.05)


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of every scalar in the logdir's event files (TensorBoard's reader)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(logdir, size_guidance={'scalars': 0, 'images': 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def read_image_tags(logdir: str) -> list[str]:
  """The image tags of the logdir's event files."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(logdir, size_guidance={'images': 0})
  acc.Reload()
  return list(acc.Tags()['images'])
