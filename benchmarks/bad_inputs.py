r"""Runs train.py / evaluate.py on a list of bad inputs and faults; prints exit code and lines printed.

  python benchmarks/bad_inputs.py            # about 2 min on 2 CPU cores
  python benchmarks/bad_inputs.py --markdown # the README's reliability table

Every case runs the real command line on the tiny embedded dataset in a
temporary directory (removed at the end). A case passes when the command
prints at most one `error:` line (plus progress lines for the cases that
train first) and exits with the expected status.
"""

import argparse
import glob
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _run(args, timeout=600, env=None):
  t = time.time()
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})})
  lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
  return proc.returncode, lines, time.time() - t


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--markdown', action='store_true')
  a = p.parse_args()
  tmp = tempfile.mkdtemp(prefix='mmtjax-bad-inputs-')
  data = os.path.join(tmp, 'tfds')
  tiny = [f'--config.data.data_dir={data}', '--config.data.builder_config=tiny', '--config.data.image_size=32',
          '--config.data.min_pixels=4', '--config.data.num_workers=2', '--config.model.embed_dim=16',
          '--config.memory.num_items=4', '--config.train.batch_size=4', '--config.train.warmup_steps=1',
          '--config.train.eval_every=0', '--config.eval.num_episodes=8', '--config.train.log_every=2',
          '--config.train.checkpoint_every=2']

  def train(workdir, *extra, config='configs/default.py'):
    return ['train.py', '--config', config, '--workdir', os.path.join(tmp, workdir), *tiny, *extra]

  def evaluate(workdir, *extra):
    return ['evaluate.py', '--config', 'configs/default.py', '--workdir', os.path.join(tmp, workdir), *tiny, *extra]

  # A trained run to break in several ways.
  code, lines, _ = _run(train('good', '--config.train.num_steps=4'))
  assert code == 0, '\n'.join(lines[-20:])

  marker = os.path.join(tmp, 'code_ran')
  bare = os.path.join(tmp, 'bare.pth')
  with open(bare, 'wb') as f:
    pickle.dump(_Payload(marker), f, protocol=2)
  legacy = os.path.join(tmp, 'legacy.pth')
  with open(legacy, 'wb') as f:
    pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
    pickle.dump(_Payload(marker), f, protocol=2)
  a_file = os.path.join(tmp, 'a_file')
  open(a_file, 'w').close()

  def truncated(name):
    shutil.copytree(os.path.join(tmp, 'good'), os.path.join(tmp, name))
    for path in glob.glob(os.path.join(tmp, name, 'checkpoints', '4', 'state', '**', '*'), recursive=True):
      if os.path.isfile(path):
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)

  def damaged_data(delete):
    copy = os.path.join(tmp, 'tfds_damaged')
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data, copy)
    files = sorted(glob.glob(os.path.join(copy, '**', '*source_train.array_record*'), recursive=True))
    if delete:
      os.remove(files[0])
    else:
      with open(files[0], 'r+b') as f:
        f.seek(100)
        f.write(b'\0' * 2000)
    return f'--config.data.data_dir={copy}'

  cases = [
      ('weights: bare pickle with os.system', lambda: train('w1', f'--config.model.pretrained={bare}'), 2),
      ('weights: legacy layout with os.system', lambda: train('w2', f'--config.model.pretrained={legacy}'), 2),
      ('config file missing', lambda: train('c1', config='configs/nope.py'), 2),
      ('config is a directory', lambda: train('c2', config='configs'), 2),
      ('unknown config field', lambda: train('c3', '--config.train.no_such=1'), 2),
      ('train.log_every=0', lambda: train('c4', '--config.train.log_every=0'), 2),
      ('train.checkpoint_every=0', lambda: train('c5', '--config.train.checkpoint_every=0'), 2),
      ('train.lr=-1', lambda: train('c6', '--config.train.lr=-1'), 2),
      ('train.lr=nan', lambda: train('c7', '--config.train.lr=nan'), 2),
      ('eval.num_episodes=0', lambda: train('c8', '--config.eval.num_episodes=0'), 2),
      ('--stop_after_steps=-5', lambda: train('c9', '--stop_after_steps=-5'), 2),
      ('memory.num_items=0', lambda: train('c10', '--config.memory.num_items=0'), 2),
      ('memory.momentum=1', lambda: train('c11', '--config.memory.momentum=1.0'), 2),
      ('memory stage the backbone lacks', lambda: train('c12', '--config.model.memory_stage=layer7'), 2),
      ('data_dir is a file', lambda: train('c13', f'--config.data.data_dir={a_file}'), 2),
      ('workdir not writable', lambda: train('a_file/sub'), 2),
      ('evaluate: empty workdir', lambda: evaluate('empty'), 2),
      ('evaluate: --output is a directory', lambda: evaluate('good', f'--output={tmp}'), 2),
      ('evaluate: --step that does not exist', lambda: evaluate('good', '--step=3'), 2),
      ('evaluate: checkpoint of another model config',
       lambda: evaluate('good', '--config.model.embed_dim=32'), 2),
      ('train: truncated latest checkpoint (recovers)',
       lambda: (truncated('t1'), train('t1', '--config.train.num_steps=6'))[1], 0),
      ('evaluate: truncated latest checkpoint', lambda: (truncated('t2'), evaluate('t2'))[1], 2),
      ('deleted array_record file', lambda: train('d1', damaged_data(True)), 2),
      ('corrupt array_record file', lambda: train('d2', damaged_data(False)), 2),
  ]
  first = None

  def second_trainer():
    nonlocal first
    first = subprocess.Popen([sys.executable, *train('busy', '--config.train.num_steps=100000')], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    lock = os.path.join(tmp, 'busy', '.train.lock')
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(lock) and os.path.getsize(lock)):
      time.sleep(0.2)
    return train('busy', '--config.train.num_steps=100000')

  cases.append(('a second trainer on the same workdir', second_trainer, 2))
  rows = []
  for name, make, want in cases:
    code, lines, seconds = _run(make())
    errors = [ln for ln in lines if ln.startswith('error:')]
    tracebacks = sum('Traceback' in ln for ln in lines)
    ok = code == want and len(errors) <= 1 and tracebacks == 0 and not os.path.exists(marker)
    rows.append((name, code, len(lines), errors[0] if errors else (lines[-1] if lines else ''), ok))
    print(f'{"ok  " if ok else "FAIL"} {name}: exit {code}, {len(lines)} lines, {seconds:.1f} s | '
          f'{rows[-1][3][:150]}', flush=True)
  if first is not None:
    first.kill()
    first.wait()
  print(f'code from a weights file ran: {os.path.exists(marker)}')
  if a.markdown:
    print('\n| case | exit | lines | message |\n| --- | --- | --- | --- |')
    for name, code, n, line, _ in rows:
      print(f'| {name} | {code} | {n} | `{line.replace(tmp, "<tmp>")[:110]}` |')
  shutil.rmtree(tmp, ignore_errors=True)
  if not all(r[4] for r in rows):
    sys.exit(1)


if __name__ == '__main__':
  main()
