"""Runs with a gs:// workdir, against a real Cloud Storage JSON API server on 127.0.0.1.

One server (`tests/gcs_server.py`, the PyPI emulator) serves every test of this module; they
run in one xdist worker (`xdist_group`), in order. Every run is the real command line,
`python -m gwtn_jax.main --workdir=gs://...`, with the clients pointed at the server the way a
user would point them: `STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage),
`TENSORSTORE_GCS_HTTP_URL` (orbax's TensorStore), anonymous credentials, and gcsfs's gRPC
bucket-layout probe off (the emulator does not answer it; a real bucket does, at once).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import tiny_config
from gwtn_jax import pipeline
from test_multihost import free_port
from test_multihost import launch
from test_reliability import LONGER
from test_reliability import REPO
from test_reliability import Run
from test_reliability import assert_bitwise_equal
from test_reliability import final_params

pytestmark = pytest.mark.xdist_group('gcs')

BUCKET = 'gwtn-test'
STAGES = ('wide', 'seed0/thin_scratch', 'seed0/thin_kd', 'seed0/imitate', 'seed0/probe',
          'seed0/finetune')


class Server:
  """A `tests/gcs_server.py` process on a port of its own, keeping objects in `data_dir`."""

  def __init__(self, data_dir, port=None):
    self.data_dir, self.port = str(data_dir), port or free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.proc = None

  def start(self):
    self.proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'tests', 'gcs_server.py'), f'--port={self.port}',
         f'--data_dir={self.data_dir}', f'--bucket={BUCKET}'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
      try:
        socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
        return self
      except OSError:
        assert self.proc.poll() is None and time.time() < deadline, 'the server did not start'
        time.sleep(0.1)

  def stop(self):
    self.proc.terminate()
    self.proc.wait(timeout=30)

  def env(self):
    """The environment that points every client at this server."""
    return {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'anonymous', 'FSSPEC_GCS_TOKEN': 'anon',
            'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """The module's server, and this process's clients pointed at it (to read results back)."""
  server = Server(tmp_path_factory.mktemp('gcs_data')).start()
  saved = {k: os.environ.get(k) for k in server.env()}
  os.environ.update(server.env())
  import fsspec.config  # pylint: disable=g-import-not-at-top
  fsspec.config.conf.setdefault('gcs', {})['token'] = 'anon'
  try:
    yield server
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    server.stop()


def fs():
  import gcsfs  # pylint: disable=g-import-not-at-top
  return gcsfs.GCSFileSystem(token='anon', use_listings_cache=False)


def read_json(path):
  with fs().open(path.removeprefix('gs://')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def local(tmp_path_factory):
  """The same run with a local workdir: what every gs:// run must reproduce."""
  workdir = tmp_path_factory.mktemp('local') / 'run'
  run = Run(workdir, *LONGER)
  assert run.wait() == 0, run.output()
  with open(workdir / 'report.json') as f:
    return workdir, json.load(f)


@pytest.fixture(scope='module')
def gs_run(gcs, local, tmp_path_factory):
  """An uninterrupted run in gs://BUCKET/run."""
  workdir = f'gs://{BUCKET}/run'
  run = Run(workdir, *LONGER, env=gcs.env(), log=tmp_path_factory.mktemp('logs') / 'run.log')
  assert run.wait() == 0, run.output()
  return workdir, run.output()


def metrics(report):
  return {k: v['metrics'] for k, v in report.items() if 'metrics' in v}


def test_a_gs_workdir_gives_the_local_report_to_the_last_digit(gs_run, local):
  workdir, out = gs_run
  assert 'warning' not in out and 'error' not in out, out
  assert metrics(read_json(f'{workdir}/report.json')) == metrics(local[1])
  files = fs().find(f'{BUCKET}/run')
  for name in ('config.json', 'report.json', 'report.md', 'curves.png',
               'stages/wide/result.json', 'stages/seed0/finetune/result.json',
               'stages/wide/final/commit_success.txt'):
    assert f'{BUCKET}/run/{name}' in files, name
  assert fs().cat(f'{BUCKET}/run/curves.png')[:8] == b'\x89PNG\r\n\x1a\n'
  # The networks themselves, read back from the bucket.
  for stage in ('wide', 'seed0/finetune'):
    assert_bitwise_equal(final_params(workdir, stage), final_params(local[0], stage), stage)


def test_tensorboard_reads_the_events_from_the_bucket(gs_run):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  for stage in ('wide', 'seed0/finetune'):
    events = event_accumulator.EventAccumulator(f'gs://{BUCKET}/run/tensorboard/{stage}')
    events.Reload()
    assert {'train/loss', 'eval/accuracy'} <= set(events.Tags()['scalars']), stage
    steps = [e.step for e in events.Scalars('eval/accuracy')]
    assert steps and steps == sorted(steps) and steps[-1] > 0, (stage, steps)


def test_fetch_sh_example_leaves_out_the_checkpoints_and_nothing_else(gs_run):
  # tpu_scripts/fetch.sh and its README give --exclude='.*checkpoint.*' for a fetch without
  # checkpoints; gsutil and gcloud match it against each object's path under the workdir.
  with open(os.path.join(REPO, 'tpu_scripts', 'fetch.sh')) as f:
    assert "--exclude='.*checkpoint.*'" in f.read()
  root = f'{BUCKET}/run/'
  names = [f.removeprefix(root) for f in fs().find(root)]
  left_out = {n for n in names if re.match('.*checkpoint.*', n)}
  assert left_out and all('/checkpoints/' in n for n in left_out)
  kept = set(names) - left_out
  for name in ('report.json', 'report.md', 'curves.png', 'config.json',
               'stages/wide/result.json', 'stages/wide/final/commit_success.txt',
               'stages/seed0/finetune/result.json'):
    assert name in kept, name
  assert any(n.startswith('tensorboard/wide/events.out.tfevents.') for n in kept)


def _wait_for_step(run, stage, step):
  run.wait_for(lambda: any(f'[{stage}] step {n}/' in run.output() for n in range(step, 99)))


def test_kill_9_and_sigterm_resume_from_the_bucket_bitwise(gcs, local, tmp_path):
  workdir, log = f'gs://{BUCKET}/killed', tmp_path / 'killed.log'
  run = Run(workdir, *LONGER, env=gcs.env(), log=log)
  _wait_for_step(run, 'wide', 6)
  run.proc.send_signal(signal.SIGKILL)
  run.wait()
  assert '[wide] done' not in run.output()

  run = Run(workdir, *LONGER, env=gcs.env(), log=log)
  _wait_for_step(run, 'seed0/thin_kd', 4)
  run.proc.send_signal(signal.SIGTERM)
  assert run.wait() == 0, run.output()
  out = run.output()
  assert '[wide] resuming at step ' in out, out
  line = [l for l in out.splitlines() if 'stopped by SIGTERM' in l]
  assert len(line) == 1 and f'saved in {workdir}/stages/seed0/thin_kd/checkpoints' in line[0]
  stopped_at = int(line[0].split(' at step ')[1].split('/')[0])
  # The checkpoint of the stop is in the bucket, complete.
  assert fs().exists(f'{BUCKET}/killed/stages/seed0/thin_kd/checkpoints/{stopped_at}/'
                     'commit_success.txt')

  run = Run(workdir, *LONGER, env=gcs.env(), log=log)
  assert run.wait() == 0, run.output()
  assert f'[seed0/thin_kd] resuming at step {stopped_at}/' in run.output()
  assert '[wide] step' not in run.output()
  for stage in STAGES:
    assert_bitwise_equal(final_params(workdir, stage), final_params(local[0], stage), stage)
  assert metrics(read_json(f'{workdir}/report.json')) == metrics(local[1])


def test_two_processes_share_one_gs_workdir(gcs, tmp_path):
  workdir = f'gs://{BUCKET}/two'
  procs, logs = launch(workdir, config='tests/tiny_config.py:fmnist', env=gcs.env(),
                       logs_at=tmp_path / 'two')
  for proc, log in zip(procs, logs):
    with open(log) as f:
      assert proc.wait(timeout=600) == 0, f.read()
  two = metrics(read_json(f'{workdir}/report.json'))
  one = metrics(pipeline.run(tiny_config('fmnist'), str(tmp_path / 'one')))
  assert set(two) == set(one)
  # Two devices against one: the sums of a step are reduced in another order.
  for key in one:
    for name, value in one[key].items():
      assert two[key][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, name)


def test_a_gs_teacher_dir_skips_stage_1_and_start_over_keeps_the_old_run(gs_run, gcs, local,
                                                                        tmp_path):
  workdir, log = f'gs://{BUCKET}/student', tmp_path / 'student.log'
  args = [*LONGER, '--config.checkpoint_every=1000', '--config.stages=("thin_kd",)',
          f'--config.teacher_dir={gs_run[0]}/stages/wide']
  run = Run(workdir, *args, env=gcs.env(), log=log)
  assert run.wait() == 0, run.output()
  assert '[wide] step' not in run.output() and '[seed0/thin_kd] done' in run.output()
  first = read_json(f'{workdir}/report.json')
  assert first['thin_kd']['metrics'] == local[1]['thin_kd']['metrics']

  run = Run(workdir, *args, '--config.thin_kd.alpha=0.5', env=gcs.env(), log=log)
  assert run.wait() == 2  # another config in a used workdir: refused
  run = Run(workdir, *args, '--config.thin_kd.alpha=0.5', '--start_over', env=gcs.env(),
            log=log)
  assert run.wait() == 0, run.output()
  (previous,) = [p for p in fs().ls(f'{BUCKET}/student') if '/previous-' in p]
  assert read_json(f'gs://{previous}/report.json') == first
  assert fs().exists(f'{previous}/stages/seed0/thin_kd/final/commit_success.txt')
  assert fs().exists(f'{previous}/config.json')
  assert read_json(f'{workdir}/config.json')['thin_kd']['alpha'] == 0.5


def _refused(args, env, limit_s):
  """Runs main with `args`; asserts one line, exit 2, no traceback, within `limit_s`."""
  started = time.time()
  proc = subprocess.run([sys.executable, '-m', 'gwtn_jax.main', *args], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS='cpu', **env), capture_output=True,
                        text=True, timeout=120)
  took = time.time() - started
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
  assert lines[0].startswith('error: ') and 'Traceback' not in lines[0]
  assert took < limit_s, f'{took:.0f}s: {lines[0]}'
  return lines[0]


def _black_hole():
  """A port that accepts connections and never answers; closed when the test ends."""
  listener = socket.socket()
  listener.bind(('127.0.0.1', 0))
  listener.listen(64)
  held = []
  stop = threading.Event()

  def serve():
    listener.settimeout(0.2)
    while not stop.is_set():
      try:
        held.append(listener.accept()[0])
      except OSError:
        pass

  threading.Thread(target=serve, daemon=True).start()
  return listener.getsockname()[1], lambda: (stop.set(), listener.close(),
                                             [c.close() for c in held])


def test_bad_remote_input_is_one_line_and_exit_2_within_seconds(gs_run, gcs):
  config = '--config=tests/tiny_config.py:fmnist'
  env = gcs.env()
  line = _refused([config, '--workdir=gs://no-such-bucket/run'], env, 30)
  assert "the bucket 'no-such-bucket' does not exist" in line
  line = _refused([config, '--workdir=gs://Bad_Bucket/run'], env, 30)
  assert "'Bad_Bucket' is not a Cloud Storage bucket name" in line
  line = _refused([config, f'--workdir={gs_run[0]}/report.json'], env, 30)
  assert 'is a file (an object), not a folder' in line
  for teacher, why in ((f'{gs_run[0]}/stages', 'no result.json there'),
                       (f'{gs_run[0]}/stages/nothing', 'no such folder')):
    line = _refused([config, f'--workdir=gs://{BUCKET}/t', '--config.stages=("thin_kd",)',
                     f'--config.teacher_dir={teacher}'], env, 30)
    assert f'teacher_dir={teacher}: {why}' in line
  # Nothing listens: said at once, not after gcsfs's half a minute of retries.
  closed = free_port()
  line = _refused([config, f'--workdir=gs://{BUCKET}/x'],
                  dict(env, STORAGE_EMULATOR_HOST=f'http://127.0.0.1:{closed}'), 15)
  assert f'cannot connect to Cloud Storage at 127.0.0.1:{closed}' in line
  # It listens and never answers: a bounded wait.
  port, close = _black_hole()
  try:
    line = _refused([config, f'--workdir=gs://{BUCKET}/x'],
                    dict(env, STORAGE_EMULATOR_HOST=f'http://127.0.0.1:{port}'), 45)
  finally:
    close()
  assert 'no answer from the store in' in line
  # None of it wrote anything.
  assert not fs().exists(f'{BUCKET}/t') and not fs().exists(f'{BUCKET}/x')


def test_a_store_that_stops_mid_run_stops_it_with_one_line_and_the_rerun_resumes(tmp_path):
  # A server of its own: this one is stopped and started again on the same objects.
  server = Server(tmp_path / 'data').start()
  workdir, log = f'gs://{BUCKET}/failing', tmp_path / 'failing.log'
  args = ['--config.stages=("wide",)', '--config.wide.steps=60', '--config.checkpoint_every=3']
  try:
    run = Run(workdir, *args, env=server.env(), log=log)
    _wait_for_step(run, 'wide', 20)
    server.stop()
    stopped = time.time()
    assert run.wait(timeout=180) == 1, run.output()
    took = time.time() - stopped
    errors = [l for l in run.output().splitlines() if l.startswith('error: ')]
    assert len(errors) == 1, run.output()
    assert f'could not write a checkpoint in {workdir}/stages/wide/checkpoints' in errors[0]
    assert 'the earlier checkpoints are intact' in errors[0]
    assert took < 90, f'{took:.0f}s to notice'

    server.start()
    run = Run(workdir, *args, env=server.env(), log=log)
    assert run.wait() == 0, run.output()
    resumed = [l for l in run.output().splitlines() if '[wide] resuming at step ' in l]
    assert len(resumed) == 1, run.output()
    assert int(resumed[0].split(' at step ')[1].split('/')[0]) >= 3
  finally:
    server.stop()


def test_a_remote_text_cache_is_shared_through_the_bucket(gcs, tmp_path, monkeypatch):
  from gwtn_jax.data import text  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import text_cache  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import wordpiece  # pylint: disable=g-import-not-at-top
  from gwtn_jax import config_lib  # pylint: disable=g-import-not-at-top
  data = config_lib.text_data_config(plays=('hamlet', 'macbeth'), vocab_size=300, seq_len=32,
                                     num_train_examples=64, num_eval_examples=16)
  data.cache_dir = f'gs://{BUCKET}/text_cache'
  monkeypatch.setattr(text_cache, 'MIRROR_DIR', str(tmp_path / 'host0'))
  made = text.prepare_text_cache(data)
  remote = {f.removeprefix(f'{BUCKET}/text_cache/') for f in fs().find(f'{BUCKET}/text_cache')}
  for what, path in made.items():
    assert path.startswith(str(tmp_path / 'host0')), what
    rel = os.path.relpath(path, str(tmp_path / 'host0' / 'gs' / BUCKET / 'text_cache'))
    assert rel in remote, (what, rel, remote)

  # Another host, with an empty local cache: it downloads, and trains and tokenizes nothing.
  monkeypatch.setattr(text_cache, 'MIRROR_DIR', str(tmp_path / 'host1'))
  monkeypatch.setattr(wordpiece, 'train_wordpiece', lambda *a, **k: pytest.fail('trained again'))
  monkeypatch.setattr(wordpiece, '_encode', lambda *a, **k: pytest.fail('tokenized again'))
  again = text.prepare_text_cache(data)
  assert set(again) == set(made)
  for what in made:
    with open(made[what], 'rb') as f, open(again[what], 'rb') as g:
      assert f.read() == g.read(), what
  batches = text.build_text_data(data).eval_batches(global_batch_size=8)
  assert np.asarray(next(iter(batches))['input_ids']).shape == (8, 32)
