"""Two real processes over jax.distributed (gloo on localhost) through the command line."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import tiny_config
from gwtn_jax import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(workdir, *extra, processes=2, config='tests/tiny_config.py', env=None, logs_at=None):
  """Starts one `gwtn_jax.main` per process, each with one CPU device; returns (procs, logs).

  The logs are `LOGS_AT.p<i>.log` (default: next to `workdir`, which must then be local).
  """
  port = free_port()
  procs, logs = [], []
  for i in range(processes):
    log = f'{logs_at or workdir}.p{i}.log'
    env_i = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
    args = [sys.executable, '-m', 'gwtn_jax.main', f'--config={config}',
            f'--workdir={workdir}', '--config.mesh.num_devices=0',
            f'--coordinator_address=localhost:{port}', f'--num_processes={processes}',
            f'--process_id={i}', *extra]
    with open(log, 'a') as f:
      procs.append(subprocess.Popen(args, cwd=REPO, env=env_i, stdout=f,
                                    stderr=subprocess.STDOUT))
    logs.append(log)
  return procs, logs


def read(path):
  with open(path) as f:
    return f.read()


def test_two_processes_give_the_one_process_report(tmp_path):
  procs, logs = launch(tmp_path / 'two')
  for proc, log in zip(procs, logs):
    assert proc.wait(timeout=600) == 0, read(log)
  # Only process 0 prints progress and writes the report.
  assert '[wide] step' in read(logs[0]) and '[wide] step' not in read(logs[1])
  with open(tmp_path / 'two' / 'report.json') as f:
    two = json.load(f)
  one = pipeline.run(tiny_config(), str(tmp_path / 'one'))
  assert set(two) == set(one)
  for key in one:
    for metric, value in one[key]['metrics'].items():
      assert two[key]['metrics'][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_sigterm_on_one_process_stops_both_at_the_same_step(tmp_path):
  workdir = tmp_path / 'wd'
  extra = ['--config.thin_scratch.steps=400', '--config.log_every=2',
           '--config.checkpoint_every=1000']
  procs, logs = launch(workdir, *extra)
  deadline = time.time() + 300
  while '[seed0/thin_scratch] step' not in read(logs[0]):
    assert all(p.poll() is None for p in procs), read(logs[0]) + read(logs[1])
    assert time.time() < deadline
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # a maintenance event seen by one host only
  for proc, log in zip(procs, logs):
    assert proc.wait(timeout=300) == 0, read(log)
  line = [l for l in read(logs[0]).splitlines() if 'seed0/thin_scratch: stopped by' in l]
  assert len(line) == 1, read(logs[0])
  step = int(line[0].split(' at step ')[1].split('/')[0])
  folder = workdir / 'stages' / 'seed0' / 'thin_scratch' / 'checkpoints'
  assert sorted(int(n) for n in os.listdir(folder) if n.isdigit()) == [step]
  # Both resume there together and finish.
  procs, logs = launch(workdir, *extra)
  for proc, log in zip(procs, logs):
    assert proc.wait(timeout=600) == 0, read(log)
  assert f'[seed0/thin_scratch] resuming at step {step}/400' in read(logs[0])
  assert os.path.exists(workdir / 'report.json')
