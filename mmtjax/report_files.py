"""Writing an evaluation's reports: the terminal text, one folder per evaluation under
<workdir>/reports/ (report.json, report.md, pictures), names that never replace a file."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from mmtjax.errors import UserError


def format_report(report: dict) -> str:
  """A plain-text table: one row per memory mode, one column per class."""
  modes = list(report['results'])
  classes = sorted({c for m in modes for c in report['results'][m]['per_class']}, key=int)
  names = [report.get('class_names', {}).get(c, f'c{c}') for c in classes]
  widths = [max(6, len(n)) for n in names]
  width = max(11, *(len(m) for m in modes))
  head = f"{'mode':<{width}} {'mIoU':>6} {'FB-IoU':>7} " + ' '.join(f'{n:>{w}}' for n, w in zip(names, widths))
  kshot = ', HSNet vote' if report.get('kshot') == 'vote' and report['shot'] > 1 else ''
  distinct = (f" ({report['distinct_episodes']} distinct: the target is small, draws repeat)"
              if report.get('distinct_episodes') else '')
  lines = [f"{report['split']}, {report['shot']}-shot{kshot}, {report['num_episodes']} episodes{distinct}"]
  if report.get('adapt'):
    a = report['adapt']
    lines.append(f"+adapt rows: {a['steps']} {a['optimizer']} steps (lr {a['lr']:g}) per episode on its own "
                 f"supports, loss {a['loss']}{' + query entropy' if a['use_query'] else ''}, groups "
                 f"{', '.join(a['groups'])}")
  if report.get('classes_note'):
    lines.append(report['classes_note'])
  lines.append(head)
  for m in modes:
    r = report['results'][m]
    cells = ' '.join(f"{r['per_class'].get(c, float('nan')):{w}.1f}" for c, w in zip(classes, widths))
    lines.append(f"{m:<{width}} {r['miou']:6.2f} {r['fb_iou']:7.2f} {cells}")
  for m in modes:
    for key, counts in report['results'][m].items():
      if key.startswith('memory_item_'):
        used = sum(1 for c in counts if c)
        lines.append(f'{m}: images per memory item ({key[len("memory_item_"):]}): {counts} '
                     f'({used} of {len(counts)} items used)')
  if report.get('episodes_per_s'):
    lines.append(f"time: {report['seconds']:.1f} s ({report['first_batch_s']:.1f} s for the first batch, which "
                 f"compiles); then {report['episodes_per_s']:.1f} episodes/s, data loading included; the device "
                 f"waited on the host {100 * report['host_wait_share']:.1f}% of that time")
  return '\n'.join(lines)


def evaluation_name(report: dict, kind: str) -> str:
  """A name holding everything that tells two evaluations of one run apart: checkpoint kind,
  step, dataset (when not the embedded one), split, shot count, protocol, HSNet's vote (k > 1)
  and test-time adaptation (its step count) when used; its report folder's name."""
  from mmtjax.data import datasets  # the registry imports tfds; the report text alone does not need it
  dataset = report.get('dataset', datasets.default_name())
  where = report['split'] if dataset == datasets.default_name() else f"{dataset}-{report['split']}"
  vote = '_vote' if report.get('kshot') == 'vote' and report['shot'] > 1 else ''
  adapted = f"_adapt{report['adapt']['steps']}" if report.get('adapt') else ''
  return f"{kind}_step{report['step']}_{where}_{report['shot']}shot_{report['protocol']}{vote}{adapted}"


def report_name(report: dict, kind: str, ext: str = 'json') -> str:
  """evaluation_name as a file name (eval_<name>.<ext>), for --output paths of one's own."""
  return f'eval_{evaluation_name(report, kind)}.{ext}'


REPORTS = 'reports'  # <workdir>/reports/<one folder per evaluation>/


@dataclasses.dataclass(frozen=True)
class ReportFiles:
  """Where one evaluation's files go: a folder of its own, <workdir>/reports/<name>/ holding
  report.json, report.md and the pictures; or, with --output, the JSON at that path and the
  others beside it (<stem>.md, <stem>_<picture>.png)."""
  json: str
  folder: str | None = None

  def path(self, name: str) -> str:
    """Where the file `name` (report.md, classes_ph2_1shot.png, episodes, ...) goes."""
    if self.folder:
      return os.path.join(self.folder, name)
    stem = os.path.splitext(self.json)[0]
    return stem + '.md' if name == 'report.md' else f'{stem}_{name}'


def report_files(output: str | None, directory: str, name: str) -> ReportFiles:
  """The files of one evaluation: --output's path, else a new folder <directory>/reports/<name>
  (<name>.1, .2, ... when it exists: nothing is ever replaced), created here."""
  if output:
    return ReportFiles(unused_path(output))
  folder = unused_path(os.path.join(directory, REPORTS, name))
  os.makedirs(folder)
  return ReportFiles(os.path.join(folder, 'report.json'), folder)


def written_files(report: dict) -> list[str]:
  """Every file an evaluation wrote (publish), in the order written."""
  return [report[k] for k in ('report_path', 'markdown_path') if report.get(k)] + list(report.get('pictures', []))


def unused_path(path: str) -> str:
  """`path`, or `stem.1.ext`, `stem.2.ext`, ... when it exists: a report is never replaced."""
  stem, ext = os.path.splitext(path)
  n = 1
  while os.path.exists(path):
    path, n = f'{stem}.{n}{ext}', n + 1
  return path


def _writable(directory: str) -> bool:
  """Whether a file can be created in `directory` (a probe file, removed: os.access says yes
  to root on a read-only mount's permissions and cannot see every read-only case)."""
  try:
    with tempfile.NamedTemporaryFile(dir=directory, prefix='.mmtjax_write_probe'):
      return True
  except OSError:
    return False


def check_destination(output: str | None, directory: str) -> None:
  """One line, before any work, when the reports could not be written: --output names a
  folder, a file in a folder that does not exist or is read-only, or (without --output) the
  directory the reports go to is read-only."""
  if output:
    if os.path.isdir(output):
      raise UserError(f'--output {output} is a directory; give a file name (e.g. {output}/report.json)')
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
      raise UserError(f'--output {output}: directory {parent} does not exist; create it or give a path in an '
                      f'existing folder')
    if not _writable(parent):
      raise UserError(f'--output {output}: directory {parent} is not writable; give a path in a writable folder')
  elif os.path.isdir(directory) and not _writable(directory):
    raise UserError(f'cannot write the reports into {directory} (not writable): give --output PATH in a '
                    f'writable folder')


def write_report(report: dict, path: str) -> str:
  """Writes the JSON report atomically to `path` (never replacing a file); returns where it wrote."""
  if os.path.isdir(path):
    raise UserError(f'--output {path} is a directory; give a file name (e.g. {path}/report.json)')
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f'cannot write the report to {path}: directory {parent} does not exist')
  path = unused_path(path)
  tmp = f'{path}.tmp'
  try:
    with open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise UserError(f'cannot write the report to {path}: {e.strerror}') from None
  return path


def write_text(path: str, text: str) -> str:
  """Writes a text file atomically (never replacing one); returns where it wrote."""
  path = unused_path(path)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
  return path
