"""The inference API and command line on a user's own images."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from mmtjax.commands.predict import main
from mmtjax.data import pipeline, transforms
from mmtjax.data.episodes import Episode
from mmtjax.errors import UserError
from mmtjax.predict import Predictor

RNG = np.random.default_rng(3)


@pytest.fixture
def workdir(trained_workdir):
  return trained_workdir


def _pair(h, w, seed):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
  image[h // 4:3 * h // 4, w // 4:3 * w // 4] = (230, 40, 40)
  mask = np.zeros((h, w), np.uint8)
  mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
  return image, mask


def test_api_matches_the_evaluation_path_on_a_non_square_image(workdir):
  predictor = Predictor.from_workdir(workdir)
  assert predictor.mode_name == 'memory_on' and predictor.size == 32
  (q, qm), (s, sm) = _pair(40, 28, 0), _pair(30, 50, 1)
  pred = predictor.segment(q, [s], [sm])
  assert pred.mask.shape == (40, 28) and pred.probability.shape == (40, 28)
  assert set(np.unique(pred.mask)) <= {0, 1} and 0.0 <= pred.probability.min() <= pred.probability.max() <= 1.0
  # The evaluation path on the same episode: the loader's resize and normalisation, the eval mode.
  source = [{'image': transforms.encode_png(im), 'label': transforms.encode_png((m > 0).astype(np.uint8)),
             'binary': True} for im, m in ((q, qm), (s, sm))]
  loader = pipeline.EpisodeLoader(source, image_size=32, augment='none', seed=0, num_workers=1)
  batch = {k: v[None] for k, v in loader.load(Episode(1, 0, (1,)), (0,)).items()}
  outputs = predictor.method.apply(predictor.model, predictor.variables, batch, train=False, mode=predictor.mode)
  expected = np.asarray(jax.device_get(outputs['logits']))[0].argmax(-1)
  np.testing.assert_array_equal((pred.logit > 0).astype(np.int64), expected)
  # Many queries with one compiled function; grey and RGBA images are converted.
  grey, rgba = q[..., 0], np.concatenate([q, np.full((40, 28, 1), 255, np.uint8)], -1)
  many = predictor.segment_many([q, grey, rgba], [s], [sm > 0])
  np.testing.assert_array_equal(many[0].mask, pred.mask)
  np.testing.assert_array_equal(many[2].mask, pred.mask)
  assert many[1].mask.shape == (40, 28)


def test_api_bad_input(workdir, tmp_path, capsys):
  predictor = Predictor.from_workdir(workdir)
  (q, _), (s, sm) = _pair(20, 20, 0), _pair(20, 20, 1)
  with pytest.raises(UserError, match='no foreground'):
    predictor.segment(q, [s], [np.zeros_like(sm)])
  # All foreground: no background to compare with. Alone an error; beside a support with background a warning.
  with pytest.raises(UserError, match='the mask of support 0 cover the whole image: .* at least one support must show '
                                      'background'):
    predictor.segment(q, [s], [np.ones_like(sm)])
  capsys.readouterr()
  assert predictor.segment(q, [s, s], [np.ones_like(sm), sm > 0]).mask.shape == (20, 20)
  assert capsys.readouterr().err.strip() == ('warning: the mask of support 0 covers the whole image (no '
                                             'background); the other supports give the background')
  with pytest.raises(UserError, match=r'support 0: image \(20, 20\) and mask \(10, 20\) differ in size'):
    predictor.segment(q, [s], [sm[:10]])
  with pytest.raises(UserError, match='no checkpoints in'):
    Predictor.from_workdir(str(tmp_path))


def test_command_line(workdir, tmp_path):
  (q, _), (s, sm) = _pair(36, 24, 0), _pair(30, 30, 1)
  Image.fromarray(q).save(tmp_path / 'q.jpg')
  Image.fromarray(q[..., 0]).save(tmp_path / 'grey.png')
  Image.fromarray(s).save(tmp_path / 's.jpg')
  Image.fromarray(sm).convert('1').save(tmp_path / 's_mask.png')  # a 1-bit mask
  out, out2 = tmp_path / 'q_mask.png', tmp_path / 'g_mask.png'
  main(['--workdir', workdir, '--support', f'{tmp_path}/s.jpg:{tmp_path}/s_mask.png', '--query',
        str(tmp_path / 'q.jpg'), '--out', str(out), '--query', str(tmp_path / 'grey.png'), '--out', str(out2)])
  assert np.asarray(Image.open(out)).shape == (36, 24) and os.path.exists(out2)
  before = out.read_bytes()
  (tmp_path / 'notes.txt').write_text('not an image')
  for args, message in (
      (['--query', str(tmp_path / 'q.jpg'), '--out', str(out)], 'exists'),
      (['--query', str(tmp_path / 'notes.txt'), '--out', str(tmp_path / 'x.png')], 'not an image'),
      (['--query', str(tmp_path / 'q.jpg')], 'one --out per --query'),
      (['--query', str(tmp_path / 'q.jpg'), '--out', str(tmp_path / 'missing' / 'q.png')], 'no folder')):
    with pytest.raises(SystemExit) as e:
      main(['--workdir', workdir, '--support', f'{tmp_path}/s.jpg:{tmp_path}/s_mask.png', *args])
    assert e.value.code == 2, message
  assert out.read_bytes() == before and not (tmp_path / 'missing').exists()
