"""Multi-host start-up: jax.distributed.initialize when the environment asks for it."""

from __future__ import annotations

import os

import jax

from mmtjax.errors import UserError

# Explicit variables (any launcher): JAX_COORDINATOR_ADDRESS=host:port,
# JAX_NUM_PROCESSES, JAX_PROCESS_ID. Cluster launchers that JAX detects by
# itself: SLURM (srun), Open MPI (mpirun), and Cloud TPU pods.
_CLUSTER_VARS = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


def _cluster_size() -> int:
  for var in _CLUSTER_VARS:
    if var in os.environ:
      return int(os.environ[var])
  return 1


def maybe_initialize() -> bool:
  """Initialises jax.distributed if the environment describes a multi-process job.

  Must run before anything touches a JAX backend. Returns whether it did.
  CPU collectives go through gloo, so the same code runs multi-process on CPU
  (the two-process test) as on GPU/TPU.
  """
  env = os.environ
  if 'JAX_COORDINATOR_ADDRESS' in env:
    missing = [v for v in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID') if v not in env]
    if missing:
      raise UserError(f'JAX_COORDINATOR_ADDRESS is set but {", ".join(missing)} is not')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(env['JAX_COORDINATOR_ADDRESS'], int(env['JAX_NUM_PROCESSES']),
                               int(env['JAX_PROCESS_ID']))
    return True
  if _cluster_size() > 1 or ',' in env.get('TPU_WORKER_HOSTNAMES', ''):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize()
    return True
  return False
