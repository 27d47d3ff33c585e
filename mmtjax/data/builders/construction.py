"""Constructing tfds builders without leaving folders behind in /tmp.

tfds 4.9 (DatasetInfo.initialize_from_bucket) creates an empty
`tempfile.mkdtemp('tfds')` folder every time a builder of a dataset not yet
prepared is constructed, and never removes it. `new_builder` points Python's
temporary directory at a private folder for the construction and removes it.
"""

from __future__ import annotations

import shutil
import tempfile
import threading

_LOCK = threading.Lock()


def new_builder(cls, **kwargs):
  """cls(**kwargs), a tfds builder, with tfds's stray temporary folders removed."""
  with _LOCK:
    private = tempfile.mkdtemp(prefix='mmtjax-tfds-')
    previous, tempfile.tempdir = tempfile.tempdir, private
    try:
      return cls(**kwargs)
    finally:
      tempfile.tempdir = previous
      shutil.rmtree(private, ignore_errors=True)
