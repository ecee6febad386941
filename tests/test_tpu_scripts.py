"""Tests of tpu_scripts/: the Cloud TPU VM scripts, without gcloud and without network.

Every script runs under bash with a fake `gcloud` (and `gsutil`) first on PATH. In dry runs
the fake fails loudly and leaves a marker, so a dry run that would call gcloud fails the
test. A few tests run the real (non-dry) paths against a recording fake instead, and the
remote command of run.sh is executed locally against a stub venv, which checks its shell
quoting end to end.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / 'tpu_scripts'
ALL_SCRIPTS = ['create.sh', 'setup.sh', 'run.sh', 'fetch.sh', 'delete.sh']

FAILING_FAKE = """#!/bin/sh
echo "FAKE $(basename "$0") CALLED: $*" >&2
echo "$(basename "$0") $*" >> "$FAKE_MARKER"
exit 97
"""

# Records each call as one line of \\x1f-separated arguments and answers the queries the
# scripts make.
RECORDING_FAKE = r"""#!/usr/bin/env bash
{ for a in "$@"; do printf '%s\037' "$a"; done; printf '\n'; } >> "$FAKE_CALLS"
case " $* " in
  *" queued-resources describe "*) echo "${FAKE_QR_STATE:-ACTIVE}" ;;
  *" tpu-vm describe "*) echo "${FAKE_ACCELERATOR_TYPE:-v4-8}" ;;
  *" tpu-vm scp "*)
    for a in "$@"; do
      case $a in *.tar.gz) if [ -f "$a" ]; then cp "$a" "$FAKE_DIR/"; fi ;; esac
    done ;;
esac
exit 0
"""


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(0o755)


def _base_env(bin_dir):
  env = {k: v for k, v in os.environ.items()
         if k not in ('DRY_RUN', 'CLOUDSDK_CORE_PROJECT')}
  env['PATH'] = f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "/usr/bin:/bin")}'
  return env


@pytest.fixture
def dry_env(tmp_path):
  """An environment whose gcloud/gsutil fail loudly; asserts afterwards none ran."""
  bin_dir = tmp_path / 'failbin'
  bin_dir.mkdir()
  for tool in ('gcloud', 'gsutil'):
    _write_exe(bin_dir / tool, FAILING_FAKE)
  marker = tmp_path / 'gcloud_was_called'
  env = _base_env(bin_dir)
  env['FAKE_MARKER'] = str(marker)
  yield env
  assert not marker.exists(), f'gcloud/gsutil ran in a dry run: {marker.read_text()}'


class Recorder:
  """A recording fake gcloud; .calls() gives the argument lists of every call."""

  def __init__(self, tmp_path):
    self.dir = tmp_path / 'recorded'
    self.dir.mkdir()
    bin_dir = tmp_path / 'recbin'
    bin_dir.mkdir()
    _write_exe(bin_dir / 'gcloud', RECORDING_FAKE)
    _write_exe(bin_dir / 'gsutil', RECORDING_FAKE)
    self.log = self.dir / 'calls'
    self.env = _base_env(bin_dir)
    self.env.update(FAKE_CALLS=str(self.log), FAKE_DIR=str(self.dir))

  def calls(self):
    if not self.log.exists():
      return []
    return [line.split('\x1f')[:-1] for line in self.log.read_text().splitlines()]


@pytest.fixture
def recorder(tmp_path):
  return Recorder(tmp_path)


def run(script, *args, env, stdin=subprocess.DEVNULL, input=None, cwd=ROOT):
  kwargs = dict(input=input) if input is not None else dict(stdin=stdin)
  return subprocess.run(['bash', str(SCRIPTS / script), *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=60, **kwargs)


def dry(script, *args, env):
  proc = run(script, '--dry-run', *args, env=env)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def commands(stdout):
  """The '+ ' lines of a plan, parsed back into argument lists (they must be valid shell)."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def gcloud_commands(stdout):
  return [c for c in commands(stdout) if c[0] in ('gcloud', 'gsutil')]


def remote_command(argv):
  (cmd,) = [a[len('--command='):] for a in argv if a.startswith('--command=')]
  return cmd


def assert_bash_syntax(cmd):
  proc = subprocess.run(['bash', '-n', '-c', cmd], capture_output=True, text=True)
  assert proc.returncode == 0, (cmd, proc.stderr)


# --- the scripts as files ----------------------------------------------------------------

@pytest.mark.parametrize('script', ALL_SCRIPTS + ['common.sh'])
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', str(SCRIPTS / script)], check=True)


@pytest.mark.parametrize('script', ALL_SCRIPTS)
def test_scripts_are_executable_and_strict(script):
  path = SCRIPTS / script
  assert os.access(path, os.X_OK)
  text = path.read_text()
  assert text.startswith('#!/usr/bin/env bash\n')
  assert 'set -euo pipefail' in text


def test_shellcheck_clean():
  # scripts/setup.sh installs shellcheck (Debian package), so it is always there in CI.
  assert shutil.which('shellcheck'), 'shellcheck is missing: run scripts/setup.sh'
  proc = subprocess.run(['shellcheck', '-x', *ALL_SCRIPTS, 'common.sh'], cwd=SCRIPTS,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_walks_through_a_pod_run():
  text = (SCRIPTS / 'README.md').read_text()
  for step in ALL_SCRIPTS:
    assert step in text
  text = text[text.index('## A pod run'):]
  assert text.index('create.sh --') < text.index('setup.sh --') < text.index('run.sh --')
  assert text.index('run.sh --') < text.index('fetch.sh --') < text.index('delete.sh --')
  assert 'preempt' in text.lower() and 'resume' in text.lower()


# --- --help ------------------------------------------------------------------------------

HELP_FLAGS = {
    'create.sh': ['--name', '--zone', '--accelerator-type', '--runtime-version', '--project',
                  '--spot', '--preemptible', '--reserved', '--queued', '--no-wait',
                  '--timeout', '--poll-interval', '--gcloud-arg', '--dry-run', '--help'],
    'setup.sh': ['--name', '--zone', '--project', '--repo', '--ref', '--src', '--remote-dir',
                 '--python', '--no-editable', '--pip-arg', '--recreate-venv', '--check',
                 '--gcloud-arg', '--dry-run', '--help'],
    'run.sh': ['--name', '--zone', '--config', '--workdir', '--project', '--accelerator-type',
               '--run-name', '--remote-dir', '--log-dir', '--env', '--compilation-cache',
               '--tf-log-level', '--detach', '--all-output', '--gcloud-arg', '--dry-run',
               '--help', '-- ARGS'],
    'fetch.sh': ['--workdir', '--dest', '--exclude', '--delete', '--tool', '--name', '--zone',
                 '--project', '--remote-dir', '--gcloud-arg', '--dry-run', '--help'],
    'delete.sh': ['--name', '--zone', '--queued', '--yes', '--project', '--gcloud-arg',
                  '--dry-run', '--help'],
}


@pytest.mark.parametrize('script', ALL_SCRIPTS)
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help(script, flag, dry_env):
  proc = run(script, flag, env=dry_env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f'Usage: {script} ')
  assert 'Examples:' in proc.stdout
  for name in HELP_FLAGS[script]:
    assert name in proc.stdout, name


def test_help_wins_over_missing_flags(dry_env):
  proc = run('run.sh', '--name=x', '--help', env=dry_env)
  assert proc.returncode == 0 and 'Usage:' in proc.stdout


# --- create.sh -----------------------------------------------------------------------------

def test_create_tpu_vm(dry_env):
  out = dry('create.sh', '--name=gwtn-v4', '--zone=us-central2-b', '--accelerator-type=v4-8',
            env=dry_env)
  (cmd,) = gcloud_commands(out)
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'gwtn-v4']
  for arg in ['--zone=us-central2-b', '--accelerator-type=v4-8',
              '--version=tpu-ubuntu2204-base']:
    assert arg in cmd
  assert '--spot' not in cmd and '--project' not in ' '.join(cmd)
  assert '1 host(s)' in out


def test_create_queued_spot_pod(dry_env):
  out = dry('create.sh', '--name', 'gwtn-pod', '--zone', 'us-east5-a', '--accelerator-type',
            'v5p-256', '--queued', '--spot', '--project=my-proj-1', '--', '--network=my-net',
            env=dry_env)
  assert 'queued-resources create' in out
  create, describe = gcloud_commands(out)
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'gwtn-pod']
  for arg in ['--node-id=gwtn-pod', '--zone=us-east5-a', '--project=my-proj-1',
              '--accelerator-type=v5p-256', '--runtime-version=v2-alpha-tpuv5', '--spot',
              '--network=my-net']:
    assert arg in create, arg
  assert describe[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe',
                          'gwtn-pod']
  assert '--format=value(state.state)' in describe
  assert 'ACTIVE' in out
  assert '32 host(s)' in out


def test_create_queued_no_wait(dry_env):
  out = dry('create.sh', '--name=q', '--zone=us-east5-a', '--accelerator-type=v5p-8',
            '--queued', '--no-wait', env=dry_env)
  assert len(gcloud_commands(out)) == 1


@pytest.mark.parametrize('accel,version', [
    ('v2-8', 'tpu-ubuntu2204-base'),
    ('v3-32', 'tpu-ubuntu2204-base'),
    ('v4-16', 'tpu-ubuntu2204-base'),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v5p-256', 'v2-alpha-tpuv5'),
    ('v6e-8', 'v2-alpha-tpuv6e'),
])
def test_create_default_runtime_version(accel, version, dry_env):
  out = dry('create.sh', '--name=t', '--zone=us-central2-b', f'--accelerator-type={accel}',
            env=dry_env)
  assert f'--version={version}' in gcloud_commands(out)[0]


def test_create_runtime_version_and_capacity_flags(dry_env):
  out = dry('create.sh', '--name=t', '--zone=us-central2-b', '--accelerator-type=v4-8',
            '--runtime-version=tpu-vm-v4-base', '--preemptible', env=dry_env)
  cmd = gcloud_commands(out)[0]
  assert '--version=tpu-vm-v4-base' in cmd and '--preemptible' in cmd
  out = dry('create.sh', '--name=t', '--zone=us-central2-b', '--accelerator-type=v4-8',
            '--reserved', env=dry_env)
  assert '--reserved' in gcloud_commands(out)[0]


def test_dry_run_from_the_environment(dry_env):
  env = dict(dry_env, DRY_RUN='1')
  proc = run('create.sh', '--name=t', '--zone=us-central2-b', '--accelerator-type=v4-8',
             env=env)
  assert proc.returncode == 0, proc.stderr
  assert '+ gcloud compute tpus tpu-vm create t' in proc.stdout


def test_create_queued_real_waits_for_active(recorder):
  env = dict(recorder.env, FAKE_QR_STATE='ACTIVE')
  proc = run('create.sh', '--name=gwtn-pod', '--zone=us-east5-a',
             '--accelerator-type=v5litepod-16', '--queued', '--poll-interval=1', env=env)
  assert proc.returncode == 0, proc.stderr
  calls = recorder.calls()
  assert calls[0][2:4] == ['queued-resources', 'create']
  assert calls[1][2:4] == ['queued-resources', 'describe']
  assert '+ gcloud compute tpus queued-resources create gwtn-pod' in proc.stderr
  assert 'ACTIVE' in proc.stderr


def test_create_queued_real_fails_on_failed_state(recorder):
  env = dict(recorder.env, FAKE_QR_STATE='FAILED')
  proc = run('create.sh', '--name=gwtn-pod', '--zone=us-east5-a',
             '--accelerator-type=v5p-16', '--queued', env=env)
  assert proc.returncode == 1
  assert 'FAILED' in proc.stderr.splitlines()[-1]


# --- setup.sh ------------------------------------------------------------------------------

def test_setup_tarball(dry_env):
  out = dry('setup.sh', '--name=gwtn-pod', '--zone=us-east5-a', '--check', env=dry_env)
  scp, unpack, install, check = gcloud_commands(out)
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert scp[5].endswith('.tar.gz') and scp[6] == 'gwtn-pod:gwtn_jax-src.tar.gz'
  for cmd in (scp, unpack, install, check):
    assert '--worker=all' in cmd and '--zone=us-east5-a' in cmd
  for cmd in (unpack, install, check):
    assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'gwtn-pod']
    assert_bash_syntax(remote_command(cmd))
  assert 'tar -xzmf gwtn_jax-src.tar.gz -C gwtn_jax' in remote_command(unpack)
  remote = remote_command(install)
  assert 'python3 -m venv .venv' in remote
  assert '. .venv/bin/activate' in remote
  assert 'pip install -e ".[tpu]"' in remote
  assert 'python3-venv' in remote and '(3, 10)' in remote
  assert 'jax.device_count()' in remote_command(check)


def test_the_tpu_extra_setup_installs_brings_gcs_support():
  # setup.sh installs '.[tpu]'; a pod's workdir is gs://, which needs gcsfs (gwtn_jax.storage).
  import configparser  # pylint: disable=g-import-not-at-top
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  extras = cfg['options.extras_require']
  names = lambda text: [re.split(r'[<>=\[ ]', line.strip())[0] for line in text.splitlines()
                        if line.strip() and not line.strip().startswith('#')]
  for extra in ('tpu', 'gcs'):
    assert 'gcsfs' in names(extras[extra]), extra
  assert 'jax' in names(extras['tpu'])
  assert 'tensorflow' not in names(cfg['options']['install_requires'])
  assert 'tensorflow-datasets' in names(cfg['options']['install_requires'])


def test_setup_from_repo(dry_env):
  out = dry('setup.sh', '--name=gwtn-pod', '--zone=us-east5-a', '--no-editable',
            '--repo=https://github.com/example/gwtn_jax.git', '--ref=v1.2',
            '--remote-dir=src/gwtn', '--python=python3.11', '--recreate-venv',
            '--pip-arg=--find-links=https://example.com/wheels', env=dry_env)
  clone, install = gcloud_commands(out)
  assert 'scp' not in out
  remote = remote_command(clone)
  assert 'git clone --quiet https://github.com/example/gwtn_jax.git src/gwtn' in remote
  assert 'fetch --quiet origin v1.2' in remote
  remote = remote_command(install)
  assert 'cd src/gwtn' in remote and 'rm -rf .venv' in remote
  assert 'python3.11 -m venv .venv' in remote and 'python3.11-venv' in remote
  assert 'pip install ".[tpu]" --find-links=https://example.com/wheels' in remote
  for cmd in (clone, install):
    assert '--worker=all' in cmd
    assert_bash_syntax(remote_command(cmd))


def test_setup_real_packs_the_working_tree(recorder, tmp_path):
  proc = run('setup.sh', '--name=gwtn-pod', '--zone=us-east5-a', env=recorder.env)
  assert proc.returncode == 0, proc.stderr
  calls = recorder.calls()
  assert [c[2:4] for c in calls] == [['tpu-vm', 'scp'], ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh']]
  tarball = recorder.dir / 'gwtn_jax-src.tar.gz'
  with tarfile.open(tarball) as tar:
    names = set(tar.getnames())
  assert {'tpu_scripts/common.sh', 'tpu_scripts/run.sh', 'setup.cfg'} <= names
  assert not any(n.startswith('.venv/') or n.startswith('.git/') for n in names)
  # The temporary tarball is gone, and the unpack command works on a fresh "worker".
  assert not pathlib.Path(calls[0][4]).exists()
  home = tmp_path / 'worker_home'
  home.mkdir()
  shutil.copy(tarball, home)
  subprocess.run(['bash', '-c', remote_command(calls[1])], cwd=home, check=True,
                 capture_output=True)
  assert (home / 'gwtn_jax' / 'tpu_scripts' / 'common.sh').exists()
  assert not (home / 'gwtn_jax-src.tar.gz').exists()


# --- run.sh --------------------------------------------------------------------------------

RUN_POD = ['--name=gwtn-pod', '--zone=us-east5-a', '--accelerator-type=v5p-256',
           '--config=configs/fashion_mnist.py:smoke', '--workdir=gs://my-bucket/gwtn/r1',
           '--run-name=r1']


def test_run_on_all_workers(dry_env):
  out = dry('run.sh', *RUN_POD, '--env=XLA_FLAGS=--xla_dump_to=/tmp/dump a',
            '--', "--config.seeds=(0,1,2)", '--config.name=it is', env=dry_env)
  (cmd,) = gcloud_commands(out)
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'gwtn-pod']
  assert '--worker=all' in cmd and '--zone=us-east5-a' in cmd
  remote = remote_command(cmd)
  assert_bash_syntax(remote)
  assert 'cd gwtn_jax; . .venv/bin/activate' in remote
  assert ('python -m gwtn_jax.main --config=configs/fashion_mnist.py:smoke '
          "--workdir=gs://my-bucket/gwtn/r1 --config.seeds='(0,1,2)' --config.name='it is'"
          in remote)
  assert 'JAX_COMPILATION_CACHE_DIR=' in remote and 'TF_CPP_MIN_LOG_LEVEL=1' in remote
  assert "XLA_FLAGS=--xla_dump_to='/tmp/dump a'" in remote
  assert '/gwtn_logs/r1.worker$W.log' in remote
  assert 'tee -a' in remote and 'nohup' not in remote


def test_run_detach(dry_env):
  out = dry('run.sh', *RUN_POD, '--detach', '--compilation-cache=gs://my-bucket/jax_cache',
            env=dry_env)
  remote = remote_command(gcloud_commands(out)[0])
  assert_bash_syntax(remote)
  assert 'setsid nohup python -m gwtn_jax.main' in remote and '</dev/null &' in remote
  assert 'JAX_COMPILATION_CACHE_DIR=gs://my-bucket/jax_cache' in remote
  assert 'tail -n 50 -F gwtn_logs/r1.worker0.log' in out


def test_run_single_host_accepts_a_local_workdir(dry_env):
  out = dry('run.sh', '--name=gwtn-v4', '--zone=us-central2-b', '--accelerator-type=v4-8',
            '--config=configs/fashion_mnist.py', '--workdir=workdirs/fmnist', env=dry_env)
  assert '--workdir=workdirs/fmnist' in remote_command(gcloud_commands(out)[0])


def test_run_real_looks_up_the_accelerator_type(recorder):
  args = ['--name=gwtn-pod', '--zone=us-east5-a', '--config=configs/fashion_mnist.py',
          '--workdir=/tmp/wd']
  proc = run('run.sh', *args, env=dict(recorder.env, FAKE_ACCELERATOR_TYPE='v4-32'))
  assert proc.returncode == 2
  assert '--workdir' in proc.stderr.splitlines()[-1]
  assert [c[2:4] for c in recorder.calls()] == [['tpu-vm', 'describe']]
  proc = run('run.sh', *args, env=dict(recorder.env, FAKE_ACCELERATOR_TYPE='v4-8'))
  assert proc.returncode == 0, proc.stderr
  assert [c[2:4] for c in recorder.calls()][1:] == [['tpu-vm', 'describe'], ['tpu-vm', 'ssh']]


def _fake_worker(tmp_path, worker, main_status=0):
  """A worker home with ~/gwtn_jax/.venv whose python records its argv and environment."""
  home = tmp_path / f'home{worker}'
  venv_bin = home / 'gwtn_jax' / '.venv' / 'bin'
  venv_bin.mkdir(parents=True)
  (venv_bin / 'activate').write_text(f'PATH="{venv_bin}:$PATH"; export PATH\n')
  _write_exe(venv_bin / 'python', f"""#!/usr/bin/env bash
printf '%s\\n' "$@" > "$HOME/argv"
echo "$JAX_COMPILATION_CACHE_DIR|$TF_CPP_MIN_LOG_LEVEL|$XLA_FLAGS" > "$HOME/env"
echo "training output of worker {worker}"
exit {main_status}
""")
  bin_dir = tmp_path / f'bin{worker}'
  bin_dir.mkdir()
  _write_exe(bin_dir / 'curl', f'#!/bin/sh\necho {worker}\n')  # the metadata server
  # pgrep sees only this test's session (see on_worker), not other runs on this machine.
  _write_exe(bin_dir / 'pgrep', f'#!/bin/sh\nexec {shutil.which("pgrep")} -s 0 "$@"\n')
  env = dict(os.environ, HOME=str(home), PATH=f'{bin_dir}:{os.environ["PATH"]}')
  return home, env


def on_worker(remote, home, env, prelude=''):
  """Runs a remote command in a new session, as ssh would, after `prelude`."""
  return subprocess.run(['bash', '-c', prelude + 'bash -c "$REMOTE"'],
                        env=dict(env, REMOTE=remote), cwd=home, capture_output=True,
                        text=True, timeout=30, start_new_session=True)


@pytest.mark.parametrize('worker,streams', [(0, True), (3, False)])
def test_run_remote_command_on_a_fake_worker(worker, streams, tmp_path, dry_env):
  out = dry('run.sh', *RUN_POD, '--env=XLA_FLAGS=--a b', '--',
            "--config.seeds=(0,1,2)", "it's", env=dry_env)
  home, env = _fake_worker(tmp_path, worker)
  proc = on_worker(remote_command(gcloud_commands(out)[0]), home, env)
  assert proc.returncode == 0, proc.stderr
  assert (home / 'argv').read_text().splitlines() == [
      '-m', 'gwtn_jax.main', '--config=configs/fashion_mnist.py:smoke',
      '--workdir=gs://my-bucket/gwtn/r1', '--config.seeds=(0,1,2)', "it's"]
  assert (home / 'env').read_text().strip() == (
      f'{home}/.cache/jax_compilation_cache|1|--a b')
  log = (home / 'gwtn_logs' / f'r1.worker{worker}.log').read_text()
  assert f'training output of worker {worker}' in log
  assert (f'training output of worker {worker}' in proc.stdout) == streams


def test_run_remote_command_reports_failure(tmp_path, dry_env):
  out = dry('run.sh', *RUN_POD, env=dry_env)
  home, env = _fake_worker(tmp_path, 2, main_status=3)
  proc = on_worker(remote_command(gcloud_commands(out)[0]), home, env)
  assert proc.returncode == 3
  assert 'worker 2' in proc.stderr and 'exit status 3' in proc.stderr


def test_run_remote_command_detached(tmp_path, dry_env):
  out = dry('run.sh', *RUN_POD, '--detach', env=dry_env)
  home, env = _fake_worker(tmp_path, 1)
  proc = on_worker(remote_command(gcloud_commands(out)[0]), home, env)
  assert proc.returncode == 0, proc.stderr
  assert 'worker 1' in proc.stdout and 'started pid' in proc.stdout
  log = home / 'gwtn_logs' / 'r1.worker1.log'
  deadline = time.time() + 10
  while 'training output' not in log.read_text() and time.time() < deadline:
    time.sleep(0.05)
  assert 'training output of worker 1' in log.read_text()


def test_run_remote_command_refuses_a_second_run(tmp_path, dry_env):
  out = dry('run.sh', *RUN_POD, env=dry_env)
  home, env = _fake_worker(tmp_path, 0)
  pkg = tmp_path / 'fake_pkg' / 'gwtn_jax'
  pkg.mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'main.py').write_text('import time\ntime.sleep(20)\n')
  env = dict(env, PYTHONPATH=str(pkg.parent), REAL_PY=sys.executable)
  # A `python -m gwtn_jax.main` already runs in this session (stopped when the test ends).
  prelude = '"$REAL_PY" -m gwtn_jax.main & trap "kill $!" EXIT; sleep 1; '
  proc = on_worker(remote_command(gcloud_commands(out)[0]), home, env, prelude)
  assert proc.returncode == 1
  assert 'already running' in proc.stderr
  assert not (home / 'argv').exists()


# --- fetch.sh ------------------------------------------------------------------------------

def test_fetch_gcs(dry_env):
  out = dry('fetch.sh', '--workdir=gs://my-bucket/gwtn/r1/', env=dry_env)
  assert '+ mkdir -p results/r1' in out
  (cmd,) = gcloud_commands(out)
  assert cmd == ['gcloud', 'storage', 'rsync', '--recursive', 'gs://my-bucket/gwtn/r1',
                 'results/r1']
  out = dry('fetch.sh', '--workdir=gs://my-bucket/gwtn/r1', '--dest=out', '--tool=gsutil',
            '--exclude=.*checkpoint.*', '--delete', env=dry_env)
  (cmd,) = gcloud_commands(out)
  assert cmd == ['gsutil', '-m', 'rsync', '-r', '-x', '.*checkpoint.*', '-d',
                 'gs://my-bucket/gwtn/r1', 'out']


def test_fetch_local_workdir_by_scp(dry_env, tmp_path):
  dest = tmp_path / 'res' / 'fmnist'
  out = dry('fetch.sh', '--workdir=workdirs/fmnist', f'--dest={dest}', '--name=gwtn-v4',
            '--zone=us-central2-b', env=dry_env)
  (cmd,) = gcloud_commands(out)
  assert cmd == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse',
                 'gwtn-v4:gwtn_jax/workdirs/fmnist', str(dest), '--zone=us-central2-b',
                 '--worker=0']


# --- delete.sh -----------------------------------------------------------------------------

def test_delete_dry_run(dry_env):
  (cmd,) = gcloud_commands(dry('delete.sh', '--name=gwtn-v4', '--zone=us-central2-b',
                               env=dry_env))
  assert cmd == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'gwtn-v4',
                 '--zone=us-central2-b', '--quiet']
  (cmd,) = gcloud_commands(dry('delete.sh', '--name=gwtn-pod', '--zone=us-east5-a',
                               '--queued', '--project=my-proj-1', env=dry_env))
  assert cmd == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'gwtn-pod',
                 '--zone=us-east5-a', '--project=my-proj-1', '--force', '--quiet']


@pytest.mark.parametrize('answer,deleted', [('y\n', True), ('yes\n', True), ('n\n', False),
                                            ('\n', False), (None, False)])
def test_delete_asks_for_confirmation(answer, deleted, recorder):
  args = ['--name=gwtn-v4', '--zone=us-central2-b']
  if answer is None:
    proc = run('delete.sh', *args, env=recorder.env)  # stdin is /dev/null
  else:
    proc = run('delete.sh', *args, env=recorder.env, input=answer)
  assert 'Delete TPU VM gwtn-v4' in proc.stderr
  assert proc.returncode == (0 if deleted else 1)
  assert len(recorder.calls()) == (1 if deleted else 0)


def test_delete_yes_skips_the_question(recorder):
  proc = run('delete.sh', '--name=gwtn-pod', '--zone=us-east5-a', '--queued', '--yes',
             env=recorder.env)
  assert proc.returncode == 0, proc.stderr
  assert 'Delete' not in proc.stderr
  assert recorder.calls()[0][2:5] == ['queued-resources', 'delete', 'gwtn-pod']


# --- bad arguments: exit 2 and one line naming the flag ----------------------------------

CREATE = ['--name=t', '--zone=us-central2-b', '--accelerator-type=v4-8']
RUN = ['--name=t', '--zone=us-central2-b', '--config=configs/fashion_mnist.py',
       '--workdir=gs://my-bucket/w']

BAD = [
    ('create.sh', ['--zone=us-central2-b', '--accelerator-type=v4-8'], '--name'),
    ('create.sh', ['--name=t', '--accelerator-type=v4-8'], '--zone'),
    ('create.sh', ['--name=t', '--zone=us-central2-b'], '--accelerator-type'),
    ('create.sh', ['--name=t', '--zone=us-central2-b', '--accelerator-type=v7-8'],
     '--accelerator-type'),
    ('create.sh', ['--name=t', '--zone=us-central2-b', '--accelerator-type=tpu-v4-8'],
     '--accelerator-type'),
    ('create.sh', ['--name=t', '--zone=us-central2-b', '--accelerator-type=v4-x'],
     '--accelerator-type'),
    ('create.sh', ['--name=t', '--zone=us-central2-b', '--accelerator-type=v5e-8'],
     '--accelerator-type'),
    ('create.sh', ['--name=t', '--zone=us-central2-b', '--accelerator-type=v4-0'],
     '--accelerator-type'),
    ('create.sh', ['--name=Bad_Name', '--zone=us-central2-b', '--accelerator-type=v4-8'],
     '--name'),
    ('create.sh', ['--name=t', '--zone=central', '--accelerator-type=v4-8'], '--zone'),
    ('create.sh', CREATE + ['--spot', '--preemptible'], '--preemptible'),
    ('create.sh', CREATE + ['--queued', '--preemptible'], '--preemptible'),
    ('create.sh', CREATE + ['--no-wait'], '--no-wait'),
    ('create.sh', CREATE + ['--poll-interval=0'], '--poll-interval'),
    ('create.sh', CREATE + ['--spot=yes'], '--spot'),
    ('create.sh', CREATE + ['--bogus'], '--bogus'),
    ('create.sh', ['--name', '--zone=us-central2-b'], '--name'),
    ('create.sh', CREATE + ['--zone'], '--zone'),
    ('create.sh', CREATE + ['--project=X'], '--project'),
    ('setup.sh', ['--zone=us-central2-b'], '--name'),
    ('setup.sh', ['--name=t'], '--zone'),
    ('setup.sh', ['--name=t', '--zone=us-central2-b', '--ref=main'], '--ref'),
    ('setup.sh', ['--name=t', '--zone=us-central2-b', '--remote-dir=../x'], '--remote-dir'),
    ('setup.sh', ['--name=t', '--zone=us-central2-b', '--src=/nonexistent'], '--src'),
    ('run.sh', ['--zone=us-central2-b', '--config=c.py', '--workdir=gs://my-bucket/w'],
     '--name'),
    ('run.sh', ['--name=t', '--config=c.py', '--workdir=gs://my-bucket/w'], '--zone'),
    ('run.sh', ['--name=t', '--zone=us-central2-b', '--workdir=gs://my-bucket/w'], '--config'),
    ('run.sh', ['--name=t', '--zone=us-central2-b', '--config=c.py'], '--workdir'),
    ('run.sh', RUN[:3] + ['--workdir=/tmp/w', '--accelerator-type=v5p-256'], '--workdir'),
    ('run.sh', RUN[:3] + ['--workdir=workdirs/w', '--accelerator-type=v4-16'], '--workdir'),
    ('run.sh', RUN[:3] + ['--workdir=/tmp/w', '--accelerator-type=v5litepod-16'],
     '--workdir'),
    ('run.sh', RUN[:3] + ['--workdir=gs://B'], '--workdir'),
    ('run.sh', RUN + ['--accelerator-type=v9-8'], '--accelerator-type'),
    ('run.sh', RUN[:2] + ['--config=configs/x.yaml', RUN[3]], '--config'),
    ('run.sh', RUN + ['--env=NOEQUALS'], '--env'),
    ('run.sh', RUN + ['--tf-log-level=9'], '--tf-log-level'),
    ('run.sh', RUN + ['--config.seeds=1'], '--config.seeds'),
    ('fetch.sh', ['--dest=x'], '--workdir'),
    ('fetch.sh', ['--workdir=workdirs/w', '--zone=us-central2-b'], '--name'),
    ('fetch.sh', ['--workdir=gs://my-bucket/w', '--tool=rsync'], '--tool'),
    ('fetch.sh', ['--workdir=gs://my-bucket/w', '--name=t', '--zone=us-central2-b'], '--name'),
    ('delete.sh', ['--zone=us-central2-b'], '--name'),
    ('delete.sh', ['--name=t'], '--zone'),
    ('delete.sh', ['--name=t', '--zone=us-central2-b', 'extra'], 'extra'),
]


@pytest.mark.parametrize('script,args,flag', BAD,
                         ids=[f'{s}:{" ".join(a)}' for s, a, _ in BAD])
@pytest.mark.parametrize('dry_run', [True, False])
def test_bad_arguments(script, args, flag, dry_run, dry_env):
  # Also without --dry-run: validation comes before any gcloud call (the fake would fail).
  proc = run(script, *(['--dry-run'] if dry_run else []), *args, env=dry_env)
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f'{script}: error: ')
  assert flag in lines[0]
  assert '+ gcloud' not in proc.stdout


def test_multihost_local_workdir_message_explains_why(dry_env):
  proc = run('run.sh', '--dry-run', *RUN[:3], '--workdir=/tmp/w',
             '--accelerator-type=v5p-256', env=dry_env)
  assert proc.returncode == 2
  msg = proc.stderr.strip()
  assert 'gs://' in msg and 'multi-host' in msg and 'same checkpoints' in msg
  assert '32 hosts' in msg
