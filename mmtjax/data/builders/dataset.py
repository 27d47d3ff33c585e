"""What a dataset declares: the one object the library asks about a dataset.

A dataset is its tfds builder class (as a tfds builder declares its info, or
mmsegmentation's dataset classes their METAINFO). Everything true of the
dataset is said there: its splits and which of them train, validate and test,
its classes and their names, its folds, its test protocols with their episode
counts and seeds, how the anchors list its test episodes, its display name,
the suites it belongs to, and whether it is a user's own data (each root its
own tfds config). The library (data/datasets.py, the episodes, the reports,
the commands) asks the dataset, never its name; the registry is one list
(datasets.register, datasets.names). A new dataset is one builder module plus
a `register` call (tests/test_datasets.py adds one in the test file).

`Dataset` holds the declarations with the defaults most datasets take; the
builders (raw.RawBuilder, embedded.MmtjaxShapes) mix it in.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmtjax.data import anchors, protocols
from mmtjax.errors import UserError


class Dataset:
  """The declarations of a dataset builder (class attributes and class methods), with the
  defaults of a test-only benchmark. `name` is the tfds builder's (its config name)."""

  name: str
  DISPLAY_NAME = ''  # in report tables (PASCAL-5i); '' is the config name
  # The split names it has, and those a config gets for the fields it leaves None: train (None:
  # a test-only target dataset), val (None: the train split) and test, and the test protocol.
  SPLITS: tuple[str, ...] = ('test',)
  DEFAULTS = dict(train_split=None, val_split=None, test_split='test', protocol='hsnet')
  # Its published test protocols by name (protocols.hsnet / uniform / pfenet); 'custom' (the
  # config's own count, seed and size) is every dataset's.
  PROTOCOLS: Mapping[str, protocols.Protocol] = {}
  SUITES: tuple[str, ...] = ()  # named sets of test datasets it belongs to (evaluate.py --suite)
  OWN_DATA = False  # a user's own folder: each root its own dataset, rebuilt when its files change
  GENERATED = False  # built from code (no manual_dir); `generate` builds it
  DEFAULT = False  # the library's default dataset: its report folders do not repeat its name
  RECORD_IDS = True  # its records carry their file names ('id'), which episode lists show
  # PATNet's episodes (Deepglobe, ISIC, Chest X-ray): episode i's class is i % C, its query and
  # supports drawn from the class's ids sorted as PATNet sorts the files, id + this suffix.
  ANCHOR_SORT_SUFFIX: str | None = None

  @classmethod
  def display_name(cls) -> str:
    return cls.DISPLAY_NAME or cls.name

  @classmethod
  def defaults(cls, fold: int) -> dict:
    """The split and protocol fields a config leaves None get these (see DEFAULTS)."""
    del fold
    return dict(cls.DEFAULTS)

  @classmethod
  def protocol(cls, name: str) -> protocols.Protocol:
    """Its published protocol `name`; one line when it has none of that name."""
    if name not in cls.PROTOCOLS:
      raise UserError(f'protocol {name!r} is not defined for dataset {cls.name!r}')
    return cls.PROTOCOLS[name]

  @classmethod
  def check_split(cls, split: str) -> None:
    """One line, before any work, for a split name it can never have (generated datasets)."""
    del split

  @classmethod
  def check_config(cls, data) -> None:
    """One line naming a bad field of the config's data section that only it reads."""
    del data

  @classmethod
  def target_options(cls, data, out) -> bool:
    """`out` (the data section as the test split sees it) takes the target's own options from
    `data`; whether they differ from the source's (then every class is a test class)."""
    del data, out
    return False

  @classmethod
  def config_name(cls, manual_dir: str, layout) -> str:
    """The tfds config of one of a user's roots (OWN_DATA datasets)."""
    raise NotImplementedError

  @classmethod
  def describe(cls) -> str:
    """One line for `python -m mmtjax.commands.list datasets`: where it comes from and what it finds."""
    return cls.name

  # Asked of a built dataset (an instance) -------------------------------------------------------

  def built_split(self, split: str) -> str | None:
    """The built split that serves the requested `split` name, or None when none does."""
    return split

  def names(self) -> tuple[str, ...]:
    """The names of class ids 1..C of the built dataset."""
    raise NotImplementedError

  def split_data(self, data, source, index, split: str, requested: str, training: bool,
                 tested_elsewhere: bool):
    """The split's SplitData: the classes its episodes use (a fold's base or novel ones) and the
    records each may take. `requested` is the split name the config gave, `split` the built one
    serving it; `tested_elsewhere`: the config tests on another dataset."""
    raise NotImplementedError

  def anchor_episodes(self, split, data, by_class: Mapping[int, list[str]], shot: int,
                      num_episodes: int | None, seed: int) -> list:
    """The anchors' (HSNet's, PATNet's) test episodes by record id (anchors.Named), for the
    datasets whose protocol 'hsnet' replays them (order 'anchors'). `by_class`: class -> the
    ids of the split's records holding it. Datasets that declare ANCHOR_SORT_SUFFIX take PATNet's
    round robin; the others say how theirs are listed."""
    del data
    if self.ANCHOR_SORT_SUFFIX is None:
      raise UserError(f"protocol 'hsnet' replays HSNet's and PATNet's episodes; {self.name} has no list of "
                      f"theirs")
    return anchors.sorted_round_robin(split, by_class, self.ANCHOR_SORT_SUFFIX, num_episodes, shot, seed)
