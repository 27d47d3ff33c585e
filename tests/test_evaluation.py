"""Scoring, HSNet's k-shot vote, sweeps over datasets / shots / seeds, reports and pictures."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mmtjax import metrics, report_files, reports, sweeps, tensorboard_events
from mmtjax.data import datasets, episodes
from mmtjax.errors import UserError
from tests.conftest import tiny_config

IGN = 255  # an ignored pixel


def test_iou_and_fb_iou_equal_hand_computed_values():
  truth = np.array([[1, 1, 0, 0],
                    [1, 1, 0, IGN],
                    [0, 0, 0, IGN]])
  pred = np.array([[1, 0, 0, 1],
                   [1, 1, 1, 1],
                   [0, 0, 0, 0]], bool)
  # 10 pixels count (two are ignored). Foreground: truth 4, predicted 5, both 3, either 6;
  # background: truth 6, predicted 5, both 4, either 7.
  np.testing.assert_array_equal(metrics.prediction_counts(pred, truth), [3, 6, 4, 7])
  empty_pred = metrics.prediction_counts(np.zeros_like(pred), truth)  # foreground 0 / 4, background 6 / 10
  np.testing.assert_array_equal(empty_pred, [0, 4, 6, 10])
  empty_truth = np.where(truth == IGN, IGN, 0)  # foreground 0 / 5 predicted, background 5 / 10
  np.testing.assert_array_equal(metrics.prediction_counts(pred, empty_truth), [0, 5, 5, 10])
  # The same through the device path (logits -> argmax at the label size).
  logits = np.stack([~pred, pred], -1).astype(np.float32)[None]
  np.testing.assert_array_equal(np.asarray(metrics.episode_counts(jnp.asarray(logits), jnp.asarray(truth[None]))),
                                [[3, 6, 4, 7]])
  meter = metrics.SegmentationMeter()
  meter.add(np.array([7, 7, 9, 9]), np.array([[3, 6, 4, 7], [0, 4, 6, 10], [0, 5, 5, 10], [9, 9, 9, 9]]),
            np.array([True, True, True, False]))  # the last is padding
  r = meter.result()
  # Class 7: 3 / 10; class 9: 0 / 5 (an empty ground truth with false positives scores 0).
  assert r['per_class'] == {'7': pytest.approx(30.0), '9': pytest.approx(0.0)}
  assert r['miou'] == pytest.approx(15.0) and r['episodes'] == 3
  assert r['fb_iou'] == pytest.approx(50 * (3 / 15 + 15 / 27))


def test_hsnet_vote_on_a_three_shot_case():
  # Votes per pixel 3, 2, 1, 0 and a pixel with 1 vote: max vote 3, threshold 1.5 -> only 3 and 2 pass.
  shots = np.array([[1, 1, 1, 0, 0],
                    [1, 1, 0, 0, 1],
                    [1, 0, 0, 0, 0]], bool)[None, :, None, :]  # [B=1, K=3, H=1, W=5]
  expected = np.array([[[True, True, False, False, False]]])
  np.testing.assert_array_equal(metrics.vote(shots), expected)
  np.testing.assert_array_equal(np.asarray(metrics.vote(jnp.asarray(shots), jnp)), expected)
  # Max vote 1 (one shot says foreground anywhere): 1 / 1 >= 0.5, foreground.
  one = np.zeros((1, 3, 1, 5), bool)
  one[0, 1, 0, 2] = True
  np.testing.assert_array_equal(metrics.vote(one)[0, 0], [False, False, True, False, False])
  # No vote anywhere: the max is clamped to 1 and nothing is foreground.
  assert not metrics.vote(np.zeros((1, 3, 1, 5), bool)).any()
  # Device path: K 1-shot logits -> votes at the label size; host path at the original resolution.
  logits = np.stack([~shots, shots], -1).astype(np.float32)  # [1, 3, 1, 5, 2]
  labels = np.array([[[1, 1, 0, 0, IGN]]])
  counts = np.asarray(metrics.episode_counts(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_array_equal(counts, [[2, 2, 2, 2]])
  diffs = np.where(shots[0, :, 0], 1.0, -1.0)[:, None, :].repeat(5, axis=1)  # [K, 5, 5]
  original = np.array([[1, 1, 0, 0, IGN]] * 5)
  canvas, sizes = metrics.original_canvas([original])
  counts = metrics.original_resolution_counts(jnp.asarray(diffs[None]), jnp.asarray(canvas), jnp.asarray(sizes))
  np.testing.assert_array_equal(np.asarray(counts), [[10, 10, 10, 10]])


def test_mean_and_std_over_seeds_equal_numpy():
  runs = [{'dataset': d, 'shot': 1, 'seed': s, 'protocol': 'hsnet', 'kshot': 'model',
           'results': {'memory_on': {'miou': m, 'fb_iou': m + 30}}}
          for d, values in (('deepglobe', (40.0, 42.5, 41.0)), ('isic2018', (30.0, 33.0, 29.5)))
          for s, m in zip((0, 1, 2), values)]
  summary = {r['dataset']: r for r in reports.summarize(runs)}
  x = np.array([40.0, 42.5, 41.0])
  assert summary['deepglobe']['miou_mean'] == pytest.approx(np.mean(x))
  assert summary['deepglobe']['miou_std'] == pytest.approx(np.std(x, ddof=1))
  per_seed_mean = (x + np.array([30.0, 33.0, 29.5])) / 2
  assert summary['mean']['miou'] == pytest.approx(list(per_seed_mean))
  assert summary['mean']['miou_std'] == pytest.approx(np.std(per_seed_mean, ddof=1))
  table = reports.markdown(list(summary.values()), 'mmt', 'caption')
  assert '| MMT (memory_on) | 41.2 ± 1.3 | 30.8 ± 1.9 | 36.0 ± 1.5 |' in table


def test_a_shot_count_larger_than_a_test_class_allows_is_one_line(tfds_dir):
  config = tiny_config(tfds_dir)
  split = datasets.load_split(config.data, 'target_test', training=False)
  protocol = datasets.test_protocol(config.data, config.eval)
  with pytest.raises(UserError, match=r'50-shot episodes need 51 images of each test class; 6 of 6 classes'):
    episodes.protocol_episodes(split, config.data, protocol, 50)


def test_sweep_reports_every_dataset_shot_and_seed(tfds_dir, trained_workdir):
  config = tiny_config(tfds_dir)
  name = os.path.join(trained_workdir, 'reports', 'latest_step2_mmtjax_shapes+deepglobe_1+2shot_seeds0+1')
  os.makedirs(name)
  kept = os.path.join(name, 'report.json')
  with open(kept, 'w') as f:
    f.write('an earlier report')
  report = sweeps.sweep(config, trained_workdir, test_datasets=['mmtjax_shapes', 'deepglobe'], shots=[1, 2],
                          seeds=[0, 1], save_predictions=1)
  with open(kept) as f:
    assert f.read() == 'an earlier report'  # never replaced: the new evaluation's folder is <name>.1
  assert report['folder'] == name + '.1' and report['report_path'] == os.path.join(name + '.1', 'report.json')
  assert report_files.written_files(report)[:2] == [report['report_path'], os.path.join(name + '.1', 'report.md')]
  assert all(p.startswith(name + '.1' + os.sep) for p in report_files.written_files(report))
  assert [s['dataset'] for s in report['skipped']] == ['deepglobe']
  assert 'not built' in report['skipped'][0]['reason'] and '--manual_dir deepglobe=PATH' in report['skipped'][0]['reason']
  with open(report['report_path']) as f:
    saved = json.load(f)
  assert saved['config']['model']['name'] == 'mmt' and saved['seeds'] == [0, 1] and saved['shots'] == [1, 2]
  cells = {(r['dataset'], r['shot'], r['seed']) for r in saved['runs']}
  assert cells == {('mmtjax_shapes', k, s) for k in (1, 2) for s in (0, 1)}
  for row in saved['summary']:
    per_seed = [r['results'][row['mode']]['miou'] for r in saved['runs'] if r['shot'] == row['shot']]
    assert row['miou_mean'] == pytest.approx(np.mean(per_seed))
    assert row['miou_std'] == pytest.approx(np.std(per_seed, ddof=1))
  # Seeds change the episodes; the timing is reported.
  hashes = {(r['shot'], r['seed']): r['episodes_sha256'] for r in saved['runs']}
  assert hashes[(1, 0)] != hashes[(1, 1)]
  assert all(r['host_wait_share'] is not None and r['episodes_per_s'] > 0 for r in saved['runs'])
  with open(report['markdown_path']) as f:
    table = f.read()
  rows = [line for line in table.splitlines() if line.startswith('| MMT')]
  # Memory transfer on and off, in the mIoU and the FB-IoU table.
  assert len(rows) == 4 and '| Method | shapes 1-shot | shapes 2-shot |' in table
  assert 'not evaluated: deepglobe' in table
  # Per-class IoU by class name (the embedded target classes are named for their patterns).
  assert '**shapes 1-shot: per-class IoU (%), 2 seed(s)**' in table
  header = next(line for line in table.splitlines() if line.startswith('| mode |'))
  assert header.startswith('| mode | rings1 | hatch1 | waves1 |'), header
  assert all(r['class_names']['21'] == 'rings1' for r in saved['runs'])
  pngs = [p for p in report['pictures'] if p.endswith('.png')]
  # One bar chart per shot, one panel per shot (its eval modes side by side), the memory picture.
  assert sorted(os.path.relpath(p, report['folder']) for p in pngs) == [
      'classes_mmtjax_shapes_1shot.png', 'classes_mmtjax_shapes_2shot.png',
      os.path.join('episodes', 'mmtjax_shapes_1shot_episode000.png'),
      os.path.join('episodes', 'mmtjax_shapes_2shot_episode000.png'), 'memory_mmtjax_shapes.png']
  assert all(os.path.getsize(p) > 0 for p in pngs) and report['memory_picture'] in pngs


def test_hsnet_vote_is_selected_by_the_config_and_recorded(tfds_dir, trained_workdir):
  config = tiny_config(tfds_dir)
  config.eval.kshot = 'vote'
  config.eval.num_episodes = 4
  report = sweeps.sweep(config, trained_workdir, shots=[2], output=os.path.join(trained_workdir, 'vote.json'))
  assert report['kshot'] == 'vote' and report['shot'] == 2
  with open(report['markdown_path']) as f:
    assert 'memory_on, vote' in f.read()


def test_training_writes_tensorboard_events(trained_workdir):
  scalars = tensorboard_events.read_scalars(os.path.join(trained_workdir, tensorboard_events.SUBDIR))
  with open(os.path.join(trained_workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  for key in ('loss', 'loss_cont', 'lr', 'grad_norm', 'episodes_per_s', 'memory_diversity'):
    assert [v for _, v in scalars[f'train/{key}']] == pytest.approx([r[key] for r in logged]), key
  assert [s for s, _ in scalars['train/loss']] == [r['step'] for r in logged]


def test_resumed_events_drop_steps_past_the_checkpoint(tmp_path):
  logdir = str(tmp_path)
  first = tensorboard_events.Writer(logdir)
  first.scalars(1, {'x': 1.0})
  first.scalars(2, {'x': 2.0})  # logged, but the run stopped before checkpointing step 2
  first.image(2, 'panel', np.zeros((4, 6, 3), np.uint8))
  first.close()
  second = tensorboard_events.Writer(logdir, start_step=1)
  second.scalars(2, {'x': 20.0})
  second.close()
  assert tensorboard_events.read_scalars(logdir)['x'] == [(1, 1.0), (2, 20.0)]


def test_evaluate_cli_names_datasets_not_built_in_one_line(tfds_dir, trained_workdir):
  cmd = [sys.executable, 'evaluate.py', '--config', 'configs/default.py', '--workdir', trained_workdir,
         f'--config.data.data_dir={tfds_dir}', '--config.data.builder_config=tiny', '--config.data.image_size=32',
         '--config.data.min_pixels=4', '--config.model.embed_dim=16', '--config.memory.num_items=4',
         '--suite', 'patnet']
  out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: nothing was evaluated: deepglobe: deepglobe is not built')
  for name in datasets.suites()['patnet']:
    assert f'--manual_dir {name}=PATH' in lines[0]


@pytest.mark.parametrize('case', ['negative seed', 'output in a missing folder', 'read-only workdir'])
def test_evaluate_cli_refuses_bad_input_before_any_work(tmp_path, case):
  """One `error:` line, exit 2, nothing written: the checks run before any checkpoint is read."""
  workdir, extra = tmp_path / 'run', []
  workdir.mkdir()
  if case == 'negative seed':
    extra, expected = ['--seeds', '-1'], 'error: seeds must be >= 0'
  elif case == 'output in a missing folder':
    extra, expected = ['--output', str(tmp_path / 'nowhere' / 'r.json')], f'directory {tmp_path / "nowhere"} does not exist'
  else:  # even root cannot create a file in /proc
    workdir, expected = '/proc/self/fdinfo', 'not writable): give --output PATH in a writable folder'
  cmd = [sys.executable, 'evaluate.py', '--config', 'configs/default.py', '--workdir', str(workdir), *extra]
  out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
  assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0], lines
  if case != 'read-only workdir':
    assert os.listdir(workdir) == [] and sorted(os.listdir(tmp_path)) == ['run']


def test_episode_panels_keep_the_images_resolution_and_bars_show_every_mode(tmp_path):
  from PIL import Image

  from mmtjax import visualize
  rng = np.random.default_rng(0)
  query = rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)
  truth = np.zeros((300, 200), np.uint8)
  truth[50:150, 40:120] = 1
  support = (rng.integers(0, 255, (100, 150, 3), dtype=np.uint8), np.ones((100, 150), np.uint8))
  panel = visualize.episode_panel([support], query, truth, {'memory_on': truth.astype(bool),
                                                             'memory_off': ~truth.astype(bool)}, 'title')
  # A row of supports, then the query, its truth and each mode's prediction at 300 px high, pixel for
  # pixel (the support scaled to that height); text at least 2% of the picture's height.
  size = visualize.panel_text_size(2, 300)
  assert panel.width == 4 * (200 + 6) + 6 and panel.height == 2 * (size + 8) + 2 * (300 + size + 8 + 6) - (size + 8) + 6
  assert size >= 0.02 * panel.height
  arr = np.asarray(panel)
  top = panel.height - 12 - 300  # (a gap under the last row and the margin)
  np.testing.assert_array_equal(arr[top:top + 300, 6:206], query)  # the query, untouched
  five = visualize.episode_panel([support] * 5, query, truth, truth.astype(bool), 'title')
  # Five 450 px supports over a 624 px query row (query, truth, prediction): one a row, none wider.
  size = visualize.panel_text_size(6, 300)
  assert five.width == 3 * (200 + 6) + 6 and five.height == 2 * (size + 8) + 6 * (300 + size + 8 + 6) - (size + 8) + 6
  assert size >= 0.02 * five.height
  tinted = visualize.overlay(query, truth, (40, 200, 60))
  assert (tinted[50, 60] == (40, 200, 60)).all() and (tinted[100, 80] != (40, 200, 60)).any()  # outline solid
  # Memory-item labels next to crowded points never overlap each other, the markers or the frame's text.
  from PIL import Image as PILImage
  from PIL import ImageDraw
  draw = ImageDraw.Draw(PILImage.new('RGB', (300, 200)))
  f = visualize.font(12)
  points = [(150 + (i % 3), 100 + (i // 3)) for i in range(8)]
  taken = [(0, 0, 300, 20)]
  corners = visualize.place_labels(draw, points, [f'{i} (12 target)' for i in range(8)], f, (0, 0, 300, 200), taken)
  boxes = [draw.textbbox(c, f'{i} (12 target)', font=f) for i, c in enumerate(corners)]
  for i, a in enumerate(boxes):
    assert a[0] >= 0 and a[2] <= 300 and a[1] >= 20 and a[3] <= 200
    assert not any(visualize._overlaps(a, b, pad=0) for b in boxes[i + 1:])
  path = str(tmp_path / 'bars.png')
  visualize.class_iou_png(path, ['horse', 'lesion'], {'memory_on': [50.0, 70.0], 'memory_off': [40.0, 60.0]},
                          'title', means={'memory_on': 60.0, 'memory_off': 50.0})
  bars = np.asarray(Image.open(path).convert('RGB'))
  for colour in visualize._MODE_COLOURS[:2]:  # one bar colour per eval mode
    assert (bars == colour).all(-1).sum() > 100


def test_several_own_folders_in_one_sweep(tfds_dir, trained_workdir, tmp_path, capsys):
  from PIL import Image
  rng = np.random.default_rng(1)
  for target, classes, count in (('horse', ('horse', 'pony'), 4), ('ph2', ('lesion',), 3)):
    for c in classes:
      for i in range(count):
        folder = tmp_path / target / c
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f'{i}.png')
        mask = np.zeros((20, 24), np.uint8)
        mask[4:14, 5:18] = 255
        Image.fromarray(mask).save(folder / f'{i}_mask.png')
  config = tiny_config(tfds_dir)
  config.eval.num_episodes = 4
  report = sweeps.sweep(config, trained_workdir, test_datasets=['horse=folder', 'ph2=folder'], shots=[1, 3],
                          manual_dirs={'horse': str(tmp_path / 'horse'), 'ph2': str(tmp_path / 'ph2')},
                          output=str(tmp_path / 'two.json'))
  # ph2's 3 images cannot serve a 3-shot episode: that cell is left out with one line, the rest runs.
  assert sorted((r['dataset'], r['shot']) for r in report['runs']) == [('horse', 1), ('horse', 3), ('ph2', 1)]
  assert [(x['dataset'], x.get('shot')) for x in report['skipped']] == [('ph2', 3)]
  err = [ln for ln in capsys.readouterr().err.splitlines() if 'left out' in ln]
  assert len(err) == 1 and err[0].startswith('warning: ph2: left out of the 3-shot cell: 3-shot episodes need 4')
  assert all(r['dataset_kind'] == 'folder' for r in report['runs'])
  assert {r['class_names']['1'] for r in report['runs']} == {'horse', 'lesion'}
  assert {r['dataset'] for r in report['summary']} >= {'horse', 'ph2', 'mean'}
  ph2 = next(r for r in report['runs'] if r['dataset'] == 'ph2')
  assert set(next(iter(ph2['results'].values()))['per_class_by_name']) == {'lesion'}
  with pytest.raises(UserError, match="test dataset 'folder' is named twice; label each one"):
    sweeps.sweep(config, trained_workdir, test_datasets=['folder', 'folder'])


def test_evaluate_with_the_workdir_alone_uses_the_runs_own_config(tfds_dir, trained_workdir, tmp_path):
  """`evaluate.py --workdir W` evaluates the run on its own data (the checkpoint's config); the
  same run with a --config that leaves out one of its data fields is named in one warning line."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  own = subprocess.run([sys.executable, 'evaluate.py', '--workdir', trained_workdir,
                        '--output', str(tmp_path / 'own.json')], capture_output=True, text=True, env=env, timeout=300)
  assert own.returncode == 0, own.stderr[-2000:]
  assert not [ln for ln in own.stderr.splitlines() if ln.startswith('warning: --config differs')]
  # A --config that leaves out the run's min_pixels: that field is named (evaluate.py warns with it).
  from configs import default
  from mmtjax import sweeps
  given = default.get_config()
  given.data.update(data_dir=tfds_dir, builder_config='tiny', image_size=32)
  diffs = sweeps.data_differences(given, sweeps.run_config(trained_workdir).to_dict())
  assert diffs == ['data.min_pixels: 4 in the run, 48 here'], diffs
  with open(tmp_path / 'own.json') as f:
    report = json.load(f)
  assert report['config']['data']['min_pixels'] == 4 and report['num_episodes'] == 12
