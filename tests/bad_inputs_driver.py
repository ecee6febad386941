"""Runs many command lines of one command (`main` or `plan`) in one process, for the bad-input table.

  python tests/bad_inputs_driver.py gwtn_jax.main ROWS.json OUT.json

ROWS.json is a list of {"id", "argv"}; each row runs the command's own `app.run` with its own
flag parser, exactly as `python -m gwtn_jax.main ...` would, but without paying JAX's import
once per row. OUT.json gets, per row, the exit status (1 for an exception that escaped: what a
user would see as a traceback), stderr, whether a traceback was printed, and the seconds taken.
A row that runs past its deadline is stopped and reported as status 'timeout'.
"""

import contextlib
import importlib
import io
import json
import signal
import sys
import time
import traceback

from absl import app
from absl import flags

DEADLINE_S = 60


class _Timeout(BaseException):
  pass


def _alarm(signum, frame):
  del signum, frame
  raise _Timeout()


def run_row(module, argv):
  flags.FLAGS.unparse_flags()
  # config_flags defines a flag per --config.* override it meets: forget the last row's.
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)
  err = io.StringIO()
  start = time.time()
  signal.signal(signal.SIGALRM, _alarm)
  signal.alarm(DEADLINE_S)
  with contextlib.redirect_stderr(err):
    try:
      sys.argv = list(argv)  # config_flags finds its --config.* overrides in sys.argv
      app.run(module.main, argv=argv, flags_parser=module._parse_flags)  # pylint: disable=protected-access
      status = 0
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _Timeout:
      status = 'timeout'
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
      status = 1
    finally:
      signal.alarm(0)
  text = err.getvalue()
  return {'status': status, 'stderr': text, 'traceback': 'Traceback (most recent call' in text,
          'seconds': time.time() - start}


def main():
  command, rows_file, out_file = sys.argv[1:]
  sys.argv = [command]  # as `python -m COMMAND` sees it when its flags are defined
  module = importlib.import_module(command)
  with open(rows_file) as f:
    rows = json.load(f)
  out = {row['id']: run_row(module, [command] + row['argv']) for row in rows}
  with open(out_file, 'w') as f:
    json.dump(out, f)


if __name__ == '__main__':
  main()
