"""Stopped any way, at any point, a rerun finishes with exactly the uninterrupted result.

kill -9 at several points of every stage, SIGTERM, non-finite values, torn and corrupt
checkpoints, failed writes, and a changed config in a used workdir. The kills and signals go
to real `python -m gwtn_jax.main` processes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from gwtn_jax import pipeline
from gwtn_jax.train import checkpoint as checkpoint_lib
from gwtn_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('wide', 'seed0/thin_scratch', 'seed0/thin_kd', 'seed0/imitate', 'seed0/probe',
          'seed0/finetune')
# Long enough stages that a kill lands inside each of them.
LONGER = ['--config.wide.steps=12', '--config.imitate.steps_per_point=3',
          '--config.finetune.steps=8', '--config.probe.steps=6', '--config.checkpoint_every=1']


class Run:
  """A `python -m gwtn_jax.main` process on a tiny pipeline (Fashion-MNIST unless told), logging
  to a file."""

  def __init__(self, workdir, *extra, config='tests/tiny_config.py:fmnist', env=None, log=None):
    self.workdir = str(workdir)
    self.log = str(log or self.workdir + '.log')  # a local file, also for a gs:// workdir
    self._offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
    env = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
    args = [sys.executable, '-m', 'gwtn_jax.main', f'--config={config}',
            f'--workdir={self.workdir}', *extra]
    with open(self.log, 'a') as f:
      self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)

  def output(self) -> str:
    with open(self.log) as f:
      f.seek(self._offset)
      return f.read()

  def wait(self, timeout=600) -> int:
    return self.proc.wait(timeout=timeout)

  def wait_for(self, condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
      assert self.proc.poll() is None, f'exited {self.proc.returncode} first:\n{self.output()}'
      assert time.time() < deadline, self.output()
      time.sleep(0.02)


def saved_steps(workdir, stage):
  folder = os.path.join(str(workdir), 'stages', stage, 'checkpoints')
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def final_params(workdir, stage):
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(os.path.join(str(workdir), 'stages', stage, 'final'))
  return jax.tree.map(np.asarray, restored)


def assert_bitwise_equal(a, b, what):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b, what
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=what)


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The uninterrupted run the interrupted ones must reproduce bit for bit."""
  workdir = tmp_path_factory.mktemp('straight') / 'run'
  run = Run(workdir, *LONGER)
  assert run.wait() == 0, run.output()
  return workdir


def test_kill_9_in_every_stage_then_rerun_is_bitwise_identical(straight, tmp_path):
  workdir = tmp_path / 'killed'
  # (stage, the checkpoint step after which the kill lands): mid-stage for every stage.
  for stage, after in (('wide', 5), ('seed0/thin_scratch', 4), ('seed0/thin_kd', 9),
                       ('seed0/imitate', 4), ('seed0/probe', 2), ('seed0/finetune', 3)):
    run = Run(workdir, *LONGER)
    run.wait_for(lambda s=stage, a=after: any(n >= a for n in saved_steps(workdir, s)))
    run.proc.send_signal(signal.SIGKILL)
    run.wait()
    assert f'[{stage}] done' not in run.output(), f'{stage} ended before the kill'
  run = Run(workdir, *LONGER)
  assert run.wait() == 0, run.output()
  assert '[seed0/finetune] resuming at step' in run.output()
  assert '[wide] step' not in run.output()  # finished stages are not run again
  for stage in STAGES:
    assert_bitwise_equal(final_params(workdir, stage), final_params(straight, stage), stage)
  with open(workdir / 'report.json') as f, open(straight / 'report.json') as g:
    resumed, expected = json.load(f), json.load(g)
  for key in expected:
    assert resumed[key]['metrics'] == expected[key]['metrics'], key


def test_sigterm_saves_exits_0_and_the_rerun_resumes(straight, tmp_path):
  workdir = tmp_path / 'term'
  # Checkpoints are rare here, so the one at the stop comes from the signal.
  args = [*LONGER, '--config.checkpoint_every=1000']
  run = Run(workdir, *args)
  run.wait_for(lambda: '[seed0/thin_kd] step' in run.output())
  run.proc.send_signal(signal.SIGTERM)
  assert run.wait() == 0, run.output()
  out = run.output()
  line = [l for l in out.splitlines() if 'stopped by SIGTERM' in l]
  assert len(line) == 1 and 'rerun the same command to resume' in line[0], out
  stopped_at = int(line[0].split(' at step ')[1].split('/')[0])
  assert saved_steps(workdir, 'seed0/thin_kd') == [stopped_at]
  assert not os.path.exists(workdir / 'stages' / 'seed0' / 'imitate')

  run = Run(workdir, *args)
  assert run.wait() == 0, run.output()
  assert f'[seed0/thin_kd] resuming at step {stopped_at}/' in run.output()
  for stage in STAGES:
    assert_bitwise_equal(final_params(workdir, stage), final_params(straight, stage), stage)


def test_nonfinite_loss_stops_the_run_and_is_never_saved(tmp_path):
  config = tiny_config(**{'stages': ('wide',), 'wide.optimizer.learning_rate': 1e30,
                          'wide.steps': 6, 'checkpoint_every': 1, 'log_every': 3})
  with pytest.raises(loop.NonFiniteError) as info:
    pipeline.run(config, str(tmp_path))
  message = str(info.value)
  assert '\n' not in message and message.startswith('wide: non-finite ')
  bad_step = int(message.split(' at step ')[1].split(' ')[0])
  steps = saved_steps(tmp_path, 'wide')
  assert steps and max(steps) < bad_step
  assert f'the last good checkpoint (step {max(steps)}) stays the latest' in message
  # What was saved is finite.
  with ocp.CheckpointManager(str(tmp_path / 'stages' / 'wide' / 'checkpoints')) as manager:
    restored = manager.restore(max(steps), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.state['params']))


# `python -m gwtn_jax.main`, with the tiny config's train data broken at its third read.
_BROKEN_DATA_MAIN = """
import sys
import numpy as np
from absl import app
from gwtn_jax.data import image_sources
read, train_reads = image_sources._SyntheticSource.read, []

def broken(self, indices):
  images, labels = read(self, indices)
  if self.num_examples == 256:  # the train split of tests/tiny_config.py
    train_reads.append(1)
    if len(train_reads) == 3:
      labels = np.full_like(labels, 99)
  return images, labels

image_sources._SyntheticSource.read = broken
from gwtn_jax import main
app.run(main.main, argv=sys.argv, flags_parser=main._parse_flags)
"""


def test_broken_data_met_mid_run_stops_with_one_line_and_keeps_the_checkpoints(tmp_path):
  # A label no start-up check could see (a tfds record, say) is met at the wide stage's third
  # batch: the command stops with the example named, exit 2, and the checkpoint of step 2 is
  # intact.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  done = subprocess.run(
      [sys.executable, '-c', _BROKEN_DATA_MAIN, '--config=tests/tiny_config.py',
       f'--workdir={tmp_path}'], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 2, done.stderr[-3000:]
  err = [l for l in done.stderr.splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith('error: ') and 'train: example ' in err[0], err
  assert 'has label 99, outside [0, num_classes=4)' in err[0], err
  assert saved_steps(tmp_path, 'wide') == [2]
  with ocp.CheckpointManager(str(tmp_path / 'stages' / 'wide' / 'checkpoints')) as manager:
    restored = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.state['params']))


def test_nonfinite_steps_can_be_skipped_and_counted(tmp_path):
  config = tiny_config(**{'stages': ('wide',), 'wide.optimizer.learning_rate': 1e30,
                          'wide.steps': 6, 'on_nonfinite': 'skip'})
  pipeline.run(config, str(tmp_path))
  result = loop.read_result(str(tmp_path / 'stages' / 'wide'))
  assert result['skipped_steps'] >= 1
  params = final_params(tmp_path, 'wide')
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def _truncate_files(folder):
  count = 0
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      if size > 16:
        with open(path, 'r+b') as f:
          f.truncate(size // 2)
        count += 1
  assert count, folder


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
  config = tiny_config(**{'stages': ('wide',), 'wide.steps': 6, 'checkpoint_every': 1,
                          'keep_checkpoints': 3})
  pipeline.run(config, str(tmp_path / 'straight'))
  expected = final_params(tmp_path / 'straight', 'wide')

  # A run killed after saving step 6 and before finishing, whose step-6 files are then torn.
  workdir = tmp_path / 'torn'
  shutil.copytree(tmp_path / 'straight', workdir)
  stage = workdir / 'stages' / 'wide'
  os.remove(stage / loop.RESULT_FILE)
  shutil.rmtree(stage / 'final')
  _truncate_files(stage / 'checkpoints' / '6' / 'state')
  capfd.readouterr()
  pipeline.run(config, str(workdir))
  err = capfd.readouterr().err
  warnings = [l for l in err.splitlines() if l.startswith('warning: checkpoint step 6')]
  assert len(warnings) == 1 and 'falling back to the previous one' in warnings[0], err
  assert any(n.startswith('corrupt-6-') for n in os.listdir(stage / 'checkpoints'))
  assert_bitwise_equal(final_params(workdir, 'wide'), expected, 'wide after fallback')


def test_a_failed_write_stops_with_one_line_and_keeps_earlier_checkpoints(tmp_path):
  workdir = tmp_path / 'wd'
  args = ['--config.stages=("wide",)', '--config.wide.steps=12', '--config.checkpoint_every=4']
  run = Run(workdir, *args)
  run.wait_for(lambda: saved_steps(workdir, 'wide') == [4])
  run.proc.send_signal(signal.SIGKILL)
  run.wait()
  checkpoints = workdir / 'stages' / 'wide' / 'checkpoints'
  # Root ignores permissions, so the folder is made immutable: nothing can be written there.
  subprocess.run(['chattr', '+i', str(checkpoints)], check=True)
  try:
    run = Run(workdir, *args)
    assert run.wait() == 1, run.output()
  finally:
    subprocess.run(['chattr', '-i', str(checkpoints)], check=True)
  errors = [l for l in run.output().splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, run.output()
  assert 'could not' in errors[0] and str(checkpoints) in errors[0], errors[0]
  assert 'the earlier checkpoints are intact' in errors[0]
  assert saved_steps(workdir, 'wide') == [4]
  assert not os.path.exists(workdir / 'stages' / 'wide' / loop.RESULT_FILE)
  # With the folder writable again, the same command finishes the stage.
  run = Run(workdir, *args)
  assert run.wait() == 0, run.output()
  assert '[wide] resuming at step 4/12' in run.output()


def test_a_changed_config_is_refused_in_a_used_workdir(tmp_path):
  workdir = tmp_path / 'wd'
  pipeline.run(tiny_config('fmnist', **{'stages': ('wide',)}), str(workdir))
  run = Run(workdir, '--config.stages=("wide",)', '--config.thin_width=0.25',
            '--config.wide.optimizer.learning_rate=0.5')
  assert run.wait() == 2
  out = run.output().strip().splitlines()
  assert len(out) == 1 and out[0].startswith('error: --workdir=') and 'thin_width' in out[0]
  assert 'wide.optimizer.learning_rate' in out[0]
  # Run-length and logging fields may change (a finished stage is still not rerun)...
  pipeline.run(tiny_config('fmnist', **{'stages': ('wide',), 'wide.steps': 8, 'log_every': 4}),
               str(workdir))
  # ...and --start_over sets the old run aside, deleting nothing.
  run = Run(workdir, '--config.stages=("wide",)', '--config.thin_width=0.25', '--start_over')
  assert run.wait() == 0, run.output()
  previous = [n for n in os.listdir(workdir) if n.startswith('previous-')]
  assert len(previous) == 1
  assert os.path.exists(workdir / previous[0] / 'stages' / 'wide' / 'final')
  assert os.path.exists(workdir / 'stages' / 'wide' / 'final')


def test_checkpoint_errors_name_the_path(tmp_path):
  target = tmp_path / 'final'
  with pytest.raises(checkpoint_lib.CheckpointError, match=str(target)):
    checkpoint_lib.restore_final(str(target), {'params': {}})


BERT = 'tests/tiny_config.py:bert'
# Dropout on, so that resuming must also reproduce the dropout masks.
BERT_LONGER = ['--config.wide.steps=6', '--config.imitate.steps_per_point=3',
               '--config.finetune.steps=6', '--config.downstream.steps=6',
               '--config.checkpoint_every=1', '--config.model.dropout_rate=0.1']
BERT_STAGES = ('wide', 'seed0/imitate', 'seed0/finetune', 'downstream/wide',
               'seed0/downstream/thin_gwtn')


def test_bert_pipeline_resumes_bitwise_after_kill_9_and_sigterm(tmp_path):
  straight = tmp_path / 'straight'
  run = Run(straight, *BERT_LONGER, config=BERT)
  assert run.wait() == 0, run.output()

  workdir = tmp_path / 'killed'
  for stage, after in (('downstream/wide', 3), ('seed0/imitate', 4), ('seed0/finetune', 2)):
    run = Run(workdir, *BERT_LONGER, config=BERT)
    run.wait_for(lambda s=stage, a=after: any(n >= a for n in saved_steps(workdir, s)))
    run.proc.send_signal(signal.SIGKILL)
    run.wait()
    assert f'[{stage}] done' not in run.output(), f'{stage} ended before the kill'
  run = Run(workdir, *BERT_LONGER, config=BERT)
  run.wait_for(lambda: '[seed0/downstream/thin_scratch] step' in run.output())
  run.proc.send_signal(signal.SIGTERM)
  assert run.wait() == 0, run.output()
  assert 'stopped by SIGTERM' in run.output()
  run = Run(workdir, *BERT_LONGER, config=BERT)
  assert run.wait() == 0, run.output()
  assert '[seed0/downstream/thin_scratch] resuming at step' in run.output()
  for stage in BERT_STAGES:
    assert_bitwise_equal(final_params(workdir, stage), final_params(straight, stage), stage)
  with open(workdir / 'report.json') as f, open(straight / 'report.json') as g:
    resumed, expected = json.load(f), json.load(g)
  for key in expected:
    if 'metrics' in expected[key]:
      assert resumed[key]['metrics'] == expected[key]['metrics'], key
