"""DINOv2 / DINOv3 ViTs equal Meta's code on golden files its code wrote (tests/golden/make_vit_golden.py)."""

import os

import jax
import numpy as np
import pytest

from mmtjax.models import vit
from mmtjax.weights import torch_pth
from mmtjax.weights import vit as vit_weights

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'vit')

# The golden configurations (make_vit_golden.CONFIGS) as ViTSpecs.
SPECS = {
    'dinov2_tiny': vit.ViTSpec('dinov2', 14, 64, 4, 2, pos_grid=4, antialias=False, offset=0.1),
    'dinov2_tiny_reg4_swiglu': vit.ViTSpec('dinov2', 14, 64, 4, 2, ffn='swiglu_fused', registers=4,
                                           pos_grid=4, antialias=True, offset=0.0),
    'dinov3_tiny_reg4': vit.ViTSpec('dinov3', 16, 64, 4, 2, registers=4, ln_eps=1e-5),
    'dinov3_tiny_reg4_swiglu': vit.ViTSpec('dinov3', 16, 64, 4, 2, ffn='swiglu', ffn_ratio=6.0,
                                           registers=4, ln_eps=1e-5),
}
TOL = 2e-5  # float32; the largest error seen is printed by the test


def _run(model, variables, x):
  def fwd(m, x):
    out = m(x)
    return ({s: out[s] for s in vit.STAGES[1:]}, {s: m.readout(out[s]) for s in vit.STAGES[1:]},
            m.cls(out))
  return jax.jit(lambda v, x: model.apply(v, x, method=fwd))(variables, x)


@pytest.mark.parametrize('name,attention', [(n, 'fused') for n in sorted(SPECS)]
                         + [('dinov3_tiny_reg4', 'plain')])
def test_golden_equality(name, attention):
  spec = SPECS[name]
  model = vit.VisionTransformer(spec, attention=attention)
  golden = np.load(os.path.join(GOLDEN, f'{name}.npz'))
  x0 = golden['input_0']
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x0[:1], method=_init_all))
  params = vit_weights.vit_from_torch(torch_pth.load_state_dict(os.path.join(GOLDEN, f'{name}.pth')),
                                      {'params': template['params']}, spec)
  worst = absolute = 0.0
  for i in range(2):
    if f'input_{i}' not in golden:
      continue
    raw, normed, cls = _run(model, params, golden[f'input_{i}'])
    for s in vit.STAGES[1:]:
      for got, key in ((raw[s], f'raw_{i}_{s}'), (normed[s], f'norm_{i}_{s}')):
        err = float(np.max(np.abs(np.asarray(got) - golden[key])))
        absolute = max(absolute, err)
        worst = max(worst, err / max(1.0, float(np.max(np.abs(golden[key])))))
    worst = max(worst, float(np.max(np.abs(np.asarray(cls) - golden[f'cls_{i}']))))
  print(f'{name} ({attention}): max abs error {absolute:.2e}, {worst:.2e} relative to max(1, |output|)')
  assert worst < TOL


def _init_all(m, x):
  out = m(x)
  return m.readout(out['layer4']), m.cls(out)
