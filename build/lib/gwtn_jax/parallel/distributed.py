"""Multi-process start: `jax.distributed.initialize` from flags, the environment, or a TPU pod.

On a Cloud TPU pod slice JAX finds the coordinator itself (`initialize()` with no arguments).
Elsewhere (GPU clusters, several CPU processes in tests) the coordinator address, the number of
processes and this process's id come from flags or from the environment variables
GWTN_COORDINATOR_ADDRESS, GWTN_NUM_PROCESSES and GWTN_PROCESS_ID. CPU processes exchange
collectives over gloo.
"""

from __future__ import annotations

import os

import jax

ENV = ('GWTN_COORDINATOR_ADDRESS', 'GWTN_NUM_PROCESSES', 'GWTN_PROCESS_ID')


def _on_tpu_pod() -> bool:
  # Set by the Cloud TPU VM runtime on every worker of a slice.
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return ',' in hosts


def initialize(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1) -> None:
  """Starts the multi-process runtime where one is asked for or needed; a no-op otherwise.

  Must run before the first JAX computation.

  Raises:
    ValueError: one line naming the flag or variable that is missing or inconsistent.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV[0], '')
  num_processes = num_processes or int(os.environ.get(ENV[1], '0') or 0)
  if process_id < 0:
    process_id = int(os.environ.get(ENV[2], '-1') or -1)
  if not coordinator_address and (num_processes > 1 or process_id > 0) and not _on_tpu_pod():
    raise ValueError(
        f'--num_processes={num_processes} --process_id={process_id} without '
        f'--coordinator_address (or {ENV[0]}): give process 0\'s host:port, or drop them for '
        'one process')
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
          f'--coordinator_address={coordinator_address} needs --num_processes >= 1 and '
          f'0 <= --process_id < num_processes (got {num_processes} and {process_id}); '
          f'or set {", ".join(ENV)}')
    if jax.config.jax_platforms in (None, '', 'cpu') and not _on_tpu_pod():
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _on_tpu_pod():
    jax.distributed.initialize()
