"""Test setup: 4 fake CPU devices, set before JAX starts."""

import os
import shutil
import tempfile
import threading

# (Not --xla_backend_optimization_level=0, although it cut the slowest compiles by a
# third: at that level XLA:CPU's 4-device pmap training drifts 4e-4 from one device,
# test_parallel.py, while the default level agrees to 1.2e-7. Tests compile what users run.)
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_enable_x64', False)
_SESSION_DIR: str | None = None


def pytest_configure(config):
  """Everything a test session writes (pytest's tmp_path folders, the compile
  cache) lives under one folder removed when the session ends: a run leaves
  nothing behind in /tmp. (Set here, not at import: test subprocesses import
  this module too.)"""
  global _SESSION_DIR
  if hasattr(config, 'workerinput'):  # A pytest-xdist worker: the controller's folder and cache.
    session = os.environ['MMTJAX_TEST_SESSION_DIR']
  else:
    session = _SESSION_DIR = tempfile.mkdtemp(prefix='mmtjax-tests-')
    os.environ['MMTJAX_TEST_SESSION_DIR'] = session  # Workers start after this and inherit it.
  if not config.option.basetemp:  # (xdist gives each worker <controller's basetemp>/popen-gwN.)
    config.option.basetemp = os.path.join(session, 'pytest')
  # Many tests compile the same tiny train/eval steps: a persistent compilation
  # cache (per test session, shared by the workers) turns the repeats into cache hits.
  cache = os.environ.get('MMTJAX_TEST_JAX_CACHE', os.path.join(session, 'jax-cache'))
  jax.config.update('jax_compilation_cache_dir', cache)
  # The command lines' own cache (cli.compile_cache), in-process and in test subprocesses: never ~/.cache.
  os.environ['MMTJAX_COMPILE_CACHE'] = cache
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_unconfigure(config):
  del config
  if _SESSION_DIR:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A data dir holding the tiny embedded dataset, built once per session."""
  path = tmp_path_factory.mktemp('tfds')
  from mmtjax.data.builders import embedded
  embedded.load_builder('tiny', str(path))
  return str(path)


@pytest.fixture(scope='session')
def trained_run(tfds_dir, tmp_path_factory):
  """A tiny MMT trained for two steps (log and checkpoint at step 2): (workdir, [whether step 1's
  metrics were released by step 2's dispatch]).

  Step 1's metrics leave the device only once the loop dispatches step 2: an io_callback in their
  computation waits for that (up to 30 s). Had the loop read them, or anything computed after
  them, before dispatching step 2, it would have waited for that callback, and the record says
  False. (CPU arrays are host memory, so jax's transfer guard cannot show this on CPU.)
  """
  from jax.experimental import io_callback

  from mmtjax import parallel, train_lib
  path = str(tmp_path_factory.mktemp('trained') / 'run')
  config = tiny_config(tfds_dir)
  config.train.num_steps = 2
  released, record = threading.Event(), []

  def wait(x):
    record.append(released.wait(30))
    return x

  gate = jax.pmap(lambda s: io_callback(wait, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), s),
                                        s))
  make = parallel.make_train_step

  def make_gated(*args, **kwargs):
    step, calls = make(*args, **kwargs), []

    def gated(state, batch):
      calls.append(None)
      if len(calls) == 2:
        released.set()
      state, stats = step(state, batch)
      return state, (gate(stats) if len(calls) == 1 else stats)
    return gated

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(parallel, 'make_train_step', make_gated)
    train_lib.train(config, path)
  return path, record


@pytest.fixture(scope='session')
def trained_workdir(trained_run):
  """trained_run's workdir, shared by the evaluation and inference tests. Tests may add reports
  to it; none may change its checkpoints."""
  return trained_run[0]


def tiny_config(tfds_dir, arg=''):
  """The default config shrunk for tests: 32 px tiny data, a few steps."""
  from configs import default
  config = default.get_config(arg)
  config.data.builder_config = 'tiny'
  config.data.data_dir = tfds_dir
  config.data.image_size = 32
  config.data.min_pixels = 4
  config.data.num_workers = 2
  if config.model.name == 'mmnet':
    config.model.reduce_dim = 16
    config.model.num_meta_classes = 10
  else:
    config.model.embed_dim = 16
  if 'memory' in config:
    config.memory.num_items = 4
  config.train.batch_size = 4
  config.train.num_steps = 4
  config.train.warmup_steps = 1
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.train.eval_every = 0
  config.train.log_panels = 0
  config.eval.val_episodes = 8
  config.eval.num_episodes = 12
  config.eval.batch_size = 4
  return config


def state_like(config, model=None, seed: int = 0):
  """A TrainState with the shapes and dtypes create_train_state gives `config`'s model, holding
  random numbers, on the host: for tests that need a template or a checkpoint's layout and never
  the init's values (jax.eval_shape compiles nothing; a real init compiles the whole network)."""
  import numpy as np

  from mmtjax.models import get_model
  from mmtjax.state import create_train_state
  model = get_model(config) if model is None else model
  abstract = jax.eval_shape(lambda: create_train_state(model, config)[0])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), abstract)
