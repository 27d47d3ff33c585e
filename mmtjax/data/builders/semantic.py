"""A user's multi-class segmentation dataset: images and label-index masks, mmsegmentation's convention.

Layouts (the root is data.manual_dir; found automatically, first match):
  <root>/img_dir/<split>/...       <root>/ann_dir/<split>/...      mmsegmentation's custom dataset
  <root>/images/<split>/...        <root>/annotations/<split>/...  ADE20K (training/validation)
  <root>/<split>/...               <root>/<split>annot/...         CamVid as SegNet ships it
  <root>/images/...                <root>/annotations/...          one folder; splits from <root>/<split>.txt
                                                                   list files, else none
or given by data.semantic.img_dir / ann_dir, paths under the root with an
optional '{split}' (e.g. 'leftImg8bit/{split}', 'gtFine/{split}'). Split
folders named training / validation / testing are the splits train / val /
test. Folders are read recursively (Cityscapes' city folders); an image and
its annotation pair by their path relative to the split folder, less
img_suffix / seg_map_suffix (mmsegmentation's names; None: any image
extension), e.g. 'aachen/a_leftImg8bit.png' <-> 'aachen/a_gtFine_labelTrainIds.png'.
A split list file holds one such name (no suffix) per line.

Annotations are label-index maps in any format PIL reads (8-bit grey or
palette PNG, BMP, TIFF, GIF; 16-bit when the values fit): value i is the
i-th class of the class list; data.semantic.ignore_index (default 255,
CamVid 11) is ignored; reduce_zero_label (ADE20K) ignores 0 and shifts the
rest down by one, as mmsegmentation does. With a palette in the class list,
RGB masks are mapped through it (a colour not in it is ignored, counted).

The class list: data.semantic.classes, a file (one name per line in label
order, or JSON: {"classes": [names], "palette": [[r, g, b], ...]}) or names
separated by commas; None: <root>/classes.txt or <root>/classes.json.

Each image is stored once with its label map (class i -> id i + 1, ignored
-> 255); a class counts in an image only with >= data.min_pixels pixels, as
for the benchmarks. The build report holds images and pixels per class,
unknown label values, images without annotation and annotations without
image (counted, with the first file), masks of another size (skipped).

Each root with its options is its own dataset (tfds config `<folder name>_<hash>`);
editing the files in place needs deleting <data_dir>/semantic/<that config>.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from mmtjax.data.builders import folder, raw
from mmtjax.data.split_data import SplitData
from mmtjax.errors import UserError
from mmtjax.labels import IGNORE_LABEL

SPLIT_NAMES = {'train': 'train', 'training': 'train', 'val': 'val', 'validation': 'val', 'test': 'test',
               'testing': 'test'}
# (image dir, annotation dir) patterns tried in order; '{split}' is a split folder.
AUTO_LAYOUTS = (('img_dir/{split}', 'ann_dir/{split}'), ('images/{split}', 'annotations/{split}'),
                ('{split}', '{split}annot'), ('img_dir', 'ann_dir'), ('images', 'annotations'))
CLASS_FILES = ('classes.txt', 'classes.json')
MAX_CLASSES = 254  # stored ids 1..254; 255 is the ignore label

OPTIONS = dict(img_dir=None, ann_dir=None, img_suffix=None, seg_map_suffix=None, classes=None,
               ignore_index=255, reduce_zero_label=False)


def options(given) -> dict:
  """data.semantic (a ConfigDict, dict or None) with every field, checked (one line per problem)."""
  given = dict(given or {})
  unknown = sorted(set(given) - set(OPTIONS))
  if unknown:
    raise UserError(f'data.semantic: unknown field(s) {unknown}; it has {sorted(OPTIONS)}')
  out = {**OPTIONS, **{k: v for k, v in given.items() if v is not None}}
  if not isinstance(out['ignore_index'], int) or not 0 <= out['ignore_index'] <= 65535:
    raise UserError(f'data.semantic.ignore_index must be an integer label value, got {out["ignore_index"]!r}')
  if (out['img_dir'] is None) != (out['ann_dir'] is None):
    raise UserError('data.semantic: give both img_dir and ann_dir (or neither, to find the layout)')
  return out


def config_name(root: str, opts: dict) -> str:
  """The tfds config name: the folder's name and a hash of its path, options and class list."""
  root = os.path.abspath(os.path.expanduser(root))
  extra = json.dumps(opts, sort_keys=True).encode()
  path = _class_file(root, opts['classes'])
  if path:
    with open(path, 'rb') as f:
      extra += f.read()
  return folder.config_name(root, extra)


def _class_file(root: str, classes) -> str | None:
  if classes is None:
    return next((os.path.join(root, f) for f in CLASS_FILES if os.path.isfile(os.path.join(root, f))), None)
  if isinstance(classes, str) and (os.sep in classes or os.path.isfile(os.path.expanduser(classes))
                                   or classes.lower().endswith(('.txt', '.json'))):
    path = os.path.expanduser(classes)
    path = path if os.path.isabs(path) or os.path.isfile(path) else os.path.join(root, path)
    if not os.path.isfile(path):
      raise UserError(f'semantic: the class list {classes} does not exist (data.semantic.classes: a file, '
                      f'or names separated by commas)')
    return path
  return None


def read_classes(root: str, classes) -> tuple[tuple[str, ...], np.ndarray | None]:
  """(names in label order, palette [C, 3] uint8 or None) from data.semantic.classes."""
  path = _class_file(root, classes)
  palette = None
  if path is None and classes is None:
    raise UserError(f'semantic: no class list: put {" or ".join(CLASS_FILES)} in {root} (one class name per '
                    f'line, in label order) or pass --config.data.semantic.classes=NAME,NAME,...')
  if path is None:
    names = [c.strip() for c in (classes.split(',') if isinstance(classes, str) else classes)]
  elif path.lower().endswith('.json'):
    try:
      with open(path) as f:
        spec = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f'semantic: cannot read the class list {path}: {e}') from e
    if isinstance(spec, list):  # [{"name": ..., "color": [r, g, b]}, ...] or [names]
      for i, entry in enumerate(spec):
        if isinstance(entry, dict) and 'name' not in entry:
          raise UserError(f'semantic: {path}: class entry {i} ({entry!r}) has no "name"')
      spec = {'classes': [s['name'] if isinstance(s, dict) else s for s in spec],
              'palette': [s['color'] for s in spec] if spec and all(isinstance(s, dict) and 'color' in s
                                                                  for s in spec) else None}
    if not isinstance(spec, dict):
      raise UserError(f'semantic: {path}: expected {{"classes": [...], "palette": [[r, g, b], ...]}} or a list of '
                      f'class names, got {type(spec).__name__}')
    names, colours = spec.get('classes') or [], spec.get('palette')
    if colours is not None:
      palette = _palette(colours, names, path)
  else:
    with open(path, encoding='utf-8') as f:
      names = [line.strip() for line in f if line.strip()]
  names = [str(n) for n in names]
  if not names or any(not n for n in names):
    raise UserError(f'semantic: the class list {path or classes!r} names no class (or an empty name)')
  if len(set(names)) < len(names):
    raise UserError(f'semantic: the class list {path or classes!r} names a class twice')
  if len(names) > MAX_CLASSES:
    raise UserError(f'semantic: {len(names)} classes; at most {MAX_CLASSES} are supported')
  return tuple(names), palette


def _palette(colours, names: list, path: str) -> np.ndarray:
  """A JSON class list's palette, checked entry by entry: [C, 3] uint8 of distinct colours."""
  if not isinstance(colours, list) or len(colours) != len(names):
    count = len(colours) if isinstance(colours, list) else type(colours).__name__
    raise UserError(f'semantic: {path}: the palette must be a list of one [r, g, b] per class ({len(names)} '
                    f'classes), got {count} entries')
  seen = {}
  for i, c in enumerate(colours):
    name = names[i] if i < len(names) else i
    if not (isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in c)):
      raise UserError(f'semantic: {path}: palette entry {i} (class {name!r}) is {json.dumps(c)}; each must be '
                      f'[r, g, b], three integers 0-255 (e.g. [64, 64, 64])')
    if any(not 0 <= v <= 255 for v in c):
      raise UserError(f'semantic: {path}: palette entry {i} (class {name!r}) is {json.dumps(c)}: values must be '
                      f'0-255')
    if tuple(c) in seen:
      raise UserError(f'semantic: {path}: classes {seen[tuple(c)]!r} and {name!r} share the palette colour {c}')
    seen[tuple(c)] = name
  return np.asarray(colours, np.uint8)


def _files(folder_path: str, suffix: str | None, extensions) -> dict[str, str]:
  """{name relative to the folder, less the suffix (or extension): path} of its files, recursively."""
  out = {}
  for top, dirs, files in os.walk(folder_path):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for f in sorted(files):
      if f.startswith('.'):
        continue
      rel = os.path.relpath(os.path.join(top, f), folder_path).replace(os.sep, '/')
      if suffix is not None:
        if rel.endswith(suffix):
          out[rel[:-len(suffix)]] = os.path.join(top, f)
      elif f.lower().endswith(extensions):
        out[os.path.splitext(rel)[0]] = os.path.join(top, f)
  return out


def label_map(path: str, num_classes: int, opts: dict, palette: np.ndarray | None) -> raw.Mask:
  """An annotation file -> stored ids (class i -> i + 1, ignored -> 255); a value beyond the class
  list (neither a class nor the ignore index) stops the build with one line naming it."""
  m = raw.mask_pixels(path) if palette is not None else _index_pixels(path)
  if m.ndim == 3:
    if palette is None:
      raise UserError(f'{path}: a colour (RGB) mask, but the class list has no palette; give a JSON class '
                      f'list with "palette", or label-index masks')
    codes = (m[..., 0].astype(np.int64) << 16) | (m[..., 1].astype(np.int64) << 8) | m[..., 2]
    keys = (palette[:, 0].astype(np.int64) << 16) | (palette[:, 1].astype(np.int64) << 8) | palette[:, 2]
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], codes), 0, len(keys) - 1)
    hit = keys[order][pos] == codes
    out = np.where(hit, order[pos] + 1, IGNORE_LABEL).astype(np.uint8)
    issues = ('colours not in the palette (ignored)',) if not hit.all() else ()
    return raw.Mask(out, issues)
  v = m.astype(np.int64)
  ignore = v == opts['ignore_index'] if not opts['reduce_zero_label'] else (v == 0)
  if opts['reduce_zero_label']:
    v = v - 1
    ignore |= v == opts['ignore_index']
  unknown = ~ignore & ((v < 0) | (v >= num_classes))
  if unknown.any():  # a short class list, or void pixels without their ignore index: never dropped silently
    value = int(np.unique(m[unknown])[0])
    raise raw.RawDataError(
        f'semantic: {path} holds label value {value}, beyond the {num_classes} classes of the class list '
        f'(values 0-{num_classes - 1}{", after reduce_zero_label" if opts["reduce_zero_label"] else ""}); add its '
        f'class to data.semantic.classes (in label order) or, if it marks void pixels, set '
        f'data.semantic.ignore_index={value}')
  out = np.where(ignore, IGNORE_LABEL, v + 1).astype(np.uint8)
  return raw.Mask(out, ())


def _index_pixels(path: str) -> np.ndarray:
  """The label values of an index mask: a palette image's indices (not its colours), 16-bit as is."""
  im = raw._open_mask(path)
  if im.mode in ('L', 'P', 'I;16', 'I;16B', 'I;16L', 'I'):
    return np.asarray(im)
  if im.mode == '1':
    return np.asarray(im, np.uint8)
  a = np.asarray(im.convert('RGB'))
  if (a == a[..., :1]).all():  # a grey map saved as RGB: the grey value is the label
    return a[..., 0].copy()
  return a


def test_class_ids(data, names: tuple[str, ...]) -> tuple[int, ...] | None:
  """data.test_classes (names or 1-based ids, a list or a comma-separated string) as ids, or None."""
  given = data.get('test_classes')
  if not given:
    return None
  items = [s.strip() for s in given.split(',')] if isinstance(given, str) else list(given)
  ids = []
  for item in items:
    if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and item not in names):
      c = int(item)
      if not 1 <= c <= len(names):
        raise UserError(f'data.test_classes: class id {c} is not among 1..{len(names)}')
    elif item in names:
      c = names.index(item) + 1
    else:
      raise UserError(f'data.test_classes: {item!r} is not a class of the dataset; it has {list(names)}')
    ids.append(c)
  if len(set(ids)) == len(names):
    raise UserError('data.test_classes names every class: leave at least one class to train on')
  return tuple(sorted(set(ids)))


class Semantic(raw.RawBuilder):
  """A user's label-index (multi-class) dataset (see the module docstring for the layouts)."""

  DOWNLOAD_PAGE = 'your own files (README: "Use your own data")'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  SEARCH_DEPTH = 0
  SPLITS = folder.Folder.SPLITS
  DEFAULTS = dict(train_split='train', val_split='val', test_split='test', protocol='custom')
  OWN_DATA = True
  options: dict = OPTIONS  # data.semantic, checked (set by configure)

  @classmethod
  def config_name(cls, manual_dir, layout):
    return config_name(manual_dir, options(layout))

  @classmethod
  def layouts_text(cls):
    return ' or '.join('{' + ', '.join(rel) + '}' for rel in AUTO_LAYOUTS)

  @classmethod
  def check_config(cls, data):
    options(data.get('semantic'))  # data.semantic: one line naming an unknown or bad field
    options({k: v for k, v in dict(data.get('test_semantic') or {}).items() if v is not None})

  @classmethod
  def target_options(cls, data, out):
    """A semantic target reads its own layout and class list: data.test_semantic over data.semantic."""
    if not data.get('test_semantic'):
      return False
    own = dict(data.get('semantic') or {})
    theirs = {**own, **{k: v for k, v in dict(data.test_semantic).items() if v is not None}}
    out.semantic = theirs
    return theirs != own

  def configure(self, class_list, layout):
    super().configure(class_list, layout)
    self.options = options(layout)

  def built_split(self, split):
    built = self.info.splits
    if split == 'val' and split not in built and 'train' in built:
      return 'train'  # no val split: held-out training images validate (split_data)
    if split == 'test' and split not in built and 'val' in built:
      return 'val'  # no test split: the val split tests (as PASCAL-5i tests on VOC's val)
    return folder.own_split(built, split)

  def layout_dirs(self, root: str) -> tuple[dict[str, tuple[str, str]], str | None]:
    """({split: (image folder, annotation folder)}, split list pattern or None) of a root."""
    o = self.options
    patterns = ((o['img_dir'], o['ann_dir']),) if o['img_dir'] is not None else AUTO_LAYOUTS
    for img, ann in patterns:
      if '{split}' in img:
        parent = os.path.dirname(os.path.join(root, img.split('{split}')[0] + 'x'))
        found = {}
        for d in raw._subdirs(parent):
          if d.lower() in SPLIT_NAMES and os.path.isdir(os.path.join(root, ann.format(split=d))) \
              and os.path.isdir(os.path.join(root, img.format(split=d))):
            found.setdefault(SPLIT_NAMES[d.lower()], (os.path.join(root, img.format(split=d)),
                                                      os.path.join(root, ann.format(split=d))))
        if found:
          return found, None
      elif os.path.isdir(os.path.join(root, img)) and os.path.isdir(os.path.join(root, ann)):
        pair = (os.path.join(root, img), os.path.join(root, ann))
        lists = {s: os.path.join(root, f'{s}.txt') for s in ('train', 'val', 'test')}
        lists = {s: p for s, p in lists.items() if os.path.isfile(p)}
        return ({s: pair for s in lists}, '{split}.txt') if lists else ({folder.ALL: pair}, None)
    return {}, None

  def is_root(self, path):
    return 0 if self.layout_dirs(path)[0] else None

  def find_root(self, manual_dir):
    if not manual_dir or not os.path.isdir(os.path.expanduser(manual_dir)):
      raise raw.RawDataError(f'semantic: data.manual_dir must name your data folder (got {manual_dir!r}); '
                             f'layouts: the semantic builder docstring (README: "Use your own data")')
    root = self.manual_top = os.path.abspath(os.path.expanduser(manual_dir))
    if self.is_root(root) is None:
      wanted = ', '.join(f'{i}/ + {a}/' for i, a in AUTO_LAYOUTS if '{split}' not in i)
      given = self.options['img_dir']
      raise raw.RawDataError(
          f'semantic: {root} holds no ' + (f'{given}/ and {self.options["ann_dir"]}/ folders (data.semantic.'
                                           f'img_dir, ann_dir)' if given else
                                           f'image and annotation folders: looked for {wanted}, or train/ + '
                                           f'trainannot/ (SegNet CamVid), or set data.semantic.img_dir and ann_dir'))
    read_classes(root, self.options['classes'])  # a bad class list: one line before any work
    return root

  def splits(self, root):
    return tuple(self.layout_dirs(root)[0])

  def class_names(self, root=None):
    if root is None:
      return tuple(self.info.metadata.get('class_names', ()))
    return read_classes(root, self.options['classes'])[0]

  def pairs(self, root: str, split: str) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    """([(name, image, annotation)], images without annotation, annotations without image)."""
    dirs, lists = self.layout_dirs(root)
    img_dir, ann_dir = dirs[split]
    o = self.options
    images = _files(img_dir, o['img_suffix'], folder.IMAGE_EXTENSIONS)
    if img_dir == ann_dir or os.path.commonpath([img_dir, ann_dir]) == img_dir:
      images = {k: v for k, v in images.items() if not v.startswith(ann_dir + os.sep)}
    anns = _files(ann_dir, o['seg_map_suffix'], folder.MASK_EXTENSIONS)
    names = sorted(images)
    if lists:
      with open(os.path.join(root, lists.format(split=split))) as f:
        wanted = [line.strip() for line in f if line.strip()]
      missing = [n for n in wanted if n not in images]
      if missing:
        raise raw.RawDataError(f'semantic: {lists.format(split=split)} names {len(missing)} image(s) not in '
                               f'{img_dir} (first: {missing[0]}); check data.semantic.img_suffix')
      names = wanted
    pairs = [(n, images[n], anns[n]) for n in names if n in anns]
    listed = set(names)
    return (pairs, [images[n] for n in names if n not in anns],
            [p for n, p in anns.items() if n not in images and (not lists or n in listed)])

  def items(self, root, split):
    names, palette = read_classes(root, self.options['classes'])
    pairs, no_ann, no_image = self.pairs(root, split)
    load = functools.partial(label_map, num_classes=len(names), opts=self.options, palette=palette)
    for name, image, ann in pairs:
      yield raw.file_item(name, image, functools.partial(load, ann), id=os.path.basename(name),
                          required=(image, ann), builder=self.name, page=self.DOWNLOAD_PAGE)
    notes = self.build_report[split]['notes']
    if no_ann:
      notes.append(f'{len(no_ann)} images without an annotation were skipped (first: {no_ann[0]})')
    if no_image:
      notes.append(f'{len(no_image)} annotations without an image were skipped (first: {no_image[0]})')

  def why_empty(self, root, split):
    img_dir, ann_dir = self.layout_dirs(root)[0][split]
    return f'no image in {img_dir} with an annotation of the same name in {ann_dir}'

  def split_data(self, data, source, index, split, requested, training, tested_elsewhere):
    """A user's label-index dataset: as a target (data.target_only) every class is a test class.

    As its own source tested on another dataset (`tested_elsewhere`): every
    class trains. Tested on itself: its classes are split as PASCAL-5i splits
    its 20 (data.test_classes, else the fold of folder.fold_classes; data.fold
    -1 means fold 0); training and validation episodes take the other classes
    (a test class's pixels are background there, as in PASCAL-5i training),
    test episodes the held-out ones. Without split folders, the test images
    are those holding a test class and training uses only images without any
    pixel of one; validation is every folder.VAL_EVERY-th training image (also
    when there is no val split).
    """
    if data.get('target_only'):
      return super().split_data(data, source, index, split, requested, training, tested_elsewhere)
    names = self.names()
    role = folder.role(requested, training)
    name_list = functools.partial(folder.name_list, names)
    where = os.fspath(self.data_dir)

    # Validation reads held-out training images when there is no val split of its own.
    holdout = split == folder.ALL or (split == 'train' and 'val' not in self.info.splits)

    def held_out(kept: dict) -> dict:  # by image (an image holds several classes): train and val apart
      if not holdout:
        return kept
      return {c: np.asarray([r for r in v if (r % folder.VAL_EVERY == folder.VAL_EVERY - 1) == (role == 'val')],
                            np.int64) for c, v in kept.items()}

    if tested_elsewhere:  # a source for another dataset: all its classes
      if data.fold >= 0 or data.get('test_classes'):
        raise UserError('semantic: data.fold / data.test_classes hold classes out for testing on this dataset, '
                        'but data.test_dataset tests on another; drop one of them')
      classes = tuple(sorted(index))
      return SplitData(source, held_out(dict(index)), classes, self.name, split, where, names, builder=self)
    novel = test_class_ids(data, names)
    how = 'data.test_classes'
    if novel is None:
      fold, folds = max(data.fold, 0), min(folder.NUM_FOLDS, len(names))
      novel = folder.fold_classes(len(names), fold, 'semantic')
      how = f'fold {fold} of {folds} (--config.data.fold=0..{folds - 1} picks another, or data.test_classes)'
    base = tuple(c for c in range(1, len(names) + 1) if c not in novel)
    note = f'{how}: testing {name_list(novel)}; training on {name_list(base)}'
    if role == 'test':
      kept = {c: index[c] for c in novel if c in index}
      return SplitData(source, kept, novel, self.name, split, where, names, note, builder=self)
    kept = {c: index[c] for c in base if c in index}
    if split == folder.ALL:  # test images (any pixel of a test class) never train
      touched = SplitData(source, index, (), cache_dir=where, name=split).all_index
      test_images = set().union(*(set(touched[c].tolist()) for c in novel if c in touched))
      kept = {c: np.asarray([r for r in v if r not in test_images], np.int64) for c, v in kept.items()}
      note += '; images holding a test class are test-only'
      if not any(len(v) for v in kept.values()):
        raise UserError(f'semantic: every image holds one of the test classes ({name_list(novel)}), so none is '
                        f'left to train on; give split folders or data.test_classes with rarer classes')
    kept = held_out(kept)
    if holdout:
      note += f'; every {folder.VAL_EVERY}th training image held out for validation'
    return SplitData(source, kept, base, self.name, split, where, names, note, builder=self)
