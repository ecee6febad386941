"""What the command lines share: their flags parsed, and any refusal said in one line.

`python -m gwtn_jax.main` and `python -m gwtn_jax.plan` parse their flags with `parse_flags`:
a missing or malformed flag, an extra positional word, a config file that is missing, does not
compile, fails to import or raises in `get_config`, an unknown `--config.*` field and a bad
override value all end as one line on stderr (`error: ...`, naming the flag, or the config
file and its line) and exit status 2, before JAX is imported. No JAX here.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import NoReturn

from absl import flags


def run(module: str, main, flags_parser) -> None:
  """Runs `main` as absl does for `python -m <module>`, from a console script too
  (`gwtn-train`): absl's `--help` shows the module docstring and the flags of `__main__`,
  which for a console script is the generated launcher, so both are lent to it first."""
  from absl import app  # pylint: disable=g-import-not-at-top
  launcher = sys.modules['__main__']
  if launcher is not sys.modules[module]:
    launcher.__doc__ = launcher.__doc__ or sys.modules[module].__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=flags_parser)


def refuse(message: str) -> NoReturn:
  """Prints `error: message` (one line) and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def _config_path(argv) -> str:
  """The config file named on the command line ('' if none): `--config=FILE[:ARG]` (the last
  one given, as absl takes it)."""
  path = ''
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith('--config='):
      value = arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path = value.split(':', 1)[0]
  return path


def _in_config_file(error: BaseException, path: str) -> str:
  """'FILE:LINE: ' of the deepest frame of `error` inside the config file (or '')."""
  if not path:
    return ''
  target = os.path.abspath(path)
  if isinstance(error, SyntaxError) and error.filename:
    if os.path.abspath(error.filename) == target:
      return f'{path}:{error.lineno}: '
  where = ''
  for frame in traceback.extract_tb(error.__traceback__):
    if os.path.abspath(frame.filename) == target:
      where = f'{path}:{frame.lineno}: '
  return where


def _root(error: BaseException) -> BaseException:
  """The exception absl's flag error wraps, if any (a config file's own error)."""
  while isinstance(error, flags.Error) and (error.__cause__ or error.__context__):
    error = error.__cause__ or error.__context__
  return error


def _message(error: BaseException, path: str) -> str:
  root = _root(error)
  where = _in_config_file(root, path)
  if isinstance(root, (AttributeError, KeyError)) and not where:
    # An override of a field the config does not have (--config.nope=1).
    text = str(root.args[0] if root.args else root)
    field = re.search(r"'([^'\\]+)", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return (f"--config: no such field '{field.group(1) if field else text}'"
            + (f' (did you mean "{hint.group(1)}"?)' if hint else '')
            + '; gwtn_jax/config/schema.py lists the fields')
  if where:  # the config file itself failed: say where, and what
    text = root.msg if isinstance(root, SyntaxError) else str(root)
    return f'--config: {where}{type(root).__name__}: {text}'
  text = str(error).strip()
  required = re.search(r'flag --(\w+)=None: Flag --\w+ must have a value other than None', text)
  if required:
    return f'--{required.group(1)} is required' + (
        ' (e.g. --config=configs/fashion_mnist.py)' if required.group(1) == 'config' else '')
  if 'Traceback' in text:  # absl quoted a traceback: its last line says why
    text = text.splitlines()[-1]
  if isinstance(root, OSError) or not text.lower().startswith(('flag', '--')):
    text = f'--config: {text}' if path and not text.startswith('--') else text
  return text


_HELP = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def absl_parse(argv: list[str]) -> list[str]:
  """`flags.FLAGS(argv)`, with `--help` an exit of status 0 (absl's is 1) after the usage."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    if any(arg in _HELP for arg in argv[1:]):
      sys.exit(0)
    raise


def parse_flags(argv: list[str], config_flag) -> list[str]:
  """absl's parser for a command whose `--config` is `config_flag`; refuses in one line.

  Args:
    argv: the command line (argv[0] the program).
    config_flag: the FlagHolder of the command's `config_flags.DEFINE_config_file`.

  Returns:
    argv[:1] (the command takes no positional arguments).
  """
  path = _config_path(argv[1:])
  if path and not os.path.isfile(path):
    refuse(f'--config: no such file {path}' if not os.path.isdir(path)
           else f'--config: {path} is a folder; give a config file (configs/*.py)')
  try:
    rest = absl_parse(argv)
    # A config file is loaded lazily: a missing or broken one fails here.
    config_flag.value.to_dict()
  except Exception as e:  # pylint: disable=broad-except
    refuse(_message(e, path))
  if len(rest) > 1:
    refuse(f'unexpected argument{"s" if len(rest) > 2 else ""} {" ".join(rest[1:])!r}: '
           'every option is a --flag (e.g. --config.stages=...)')
  return rest
