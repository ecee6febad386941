"""The package as users install it: a wheel with its console scripts, into a fresh venv."""

import email.parser
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  # Built from a copy of what a clean clone holds, so that setuptools' build/ stays out of
  # the repository.
  source = str(tmp_path_factory.mktemp('source') / 'gwtn_jax')
  tracked = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
  for name in (n for n in tracked if os.path.isfile(os.path.join(REPO, n))):
    os.makedirs(os.path.dirname(os.path.join(source, name)), exist_ok=True)
    shutil.copy2(os.path.join(REPO, name), os.path.join(source, name))
  dist = str(tmp_path_factory.mktemp('dist'))
  done = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                         '-q', '-w', dist, source], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  (name,) = [n for n in os.listdir(dist) if n.endswith('.whl')]
  return os.path.join(dist, name)


def test_the_wheel_holds_the_package_its_scripts_licence_and_ranges(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    info = next(n.split('/')[0] for n in names if n.endswith('.dist-info/METADATA'))
    metadata = email.parser.Parser().parsestr(z.read(f'{info}/METADATA').decode())
    entry_points = z.read(f'{info}/entry_points.txt').decode()
  for module in ('gwtn_jax/main.py', 'gwtn_jax/models/resnet.py', 'gwtn_jax/interop/bert_hf.py',
                 'gwtn_jax/train/flops.py'):
    assert module in names, module
  assert not any(n.startswith(('tests/', 'configs/', 'benchmarks/')) for n in names)
  assert any(n.endswith('LICENSE') and 'dist-info' in n for n in names)
  for script, target in (('gwtn-train', 'gwtn_jax.main:run'), ('gwtn-plan', 'gwtn_jax.plan:run'),
                         ('gwtn-export', 'gwtn_jax.export:run')):
    assert f'{script} = {target}' in entry_points
  requires = metadata.get_all('Requires-Dist')
  assert any(r.replace(' ', '').startswith('jax<0.11,>=0.10.2') for r in requires), requires
  assert set(metadata.get_all('Provides-Extra')) >= {'demo', 'gcs', 'tpu', 'gpu', 'interop',
                                                     'test'}
  assert metadata['License'] == 'Apache-2.0' or 'Apache' in str(metadata.get('License-Expression'))


def test_a_fresh_venv_runs_the_console_scripts(wheel, tmp_path):
  env = str(tmp_path / 'env')
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', env], check=True, timeout=120)
  python = os.path.join(env, 'bin', 'python')
  # The wheel alone goes into the fresh venv; its dependencies are this venv's (a .pth line
  # adds the folder to the path without running its .pth files, so the editable install of
  # the repository stays out).
  done = subprocess.run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q',
                         '--no-deps', wheel], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  target = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(target, 'deps.pth'), 'w') as f:
    f.write('\n'.join(site.getsitepackages()) + '\n')
  run = lambda *args: subprocess.run(list(args), cwd=str(tmp_path), capture_output=True,
                                     text=True, timeout=600, env=dict(os.environ,
                                                                      JAX_PLATFORMS='cpu'))
  where = run(python, '-c', 'import gwtn_jax; print(gwtn_jax.__file__)')
  assert where.stdout.startswith(env), where.stdout + where.stderr
  for script, flag in (('gwtn-train', '--workdir'), ('gwtn-plan', '--devices'),
                       ('gwtn-export', '--network')):
    shown = run(os.path.join(env, 'bin', script), '--help')
    assert shown.returncode == 0 and flag in shown.stdout, (script, shown.stderr[-2000:])
  trained = run(os.path.join(env, 'bin', 'gwtn-train'),
                f'--config={os.path.join(REPO, "tests", "tiny_config.py")}',
                '--config.stages=("wide","thin_scratch")', f'--workdir={tmp_path / "run"}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  report = json.load(open(tmp_path / 'run' / 'report.json'))
  assert set(report) == {'wide', 'thin_scratch'}
  refused = run(os.path.join(env, 'bin', 'gwtn-train'), '--config=nowhere.py', '--workdir=x')
  assert refused.returncode == 2 and refused.stderr.strip() == 'error: --config: no such file nowhere.py'
