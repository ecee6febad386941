"""One name for the config's three parts, as config files and callers have always used it.

  gwtn_jax.config.schema      every field and its default (no JAX: config files import it)
  gwtn_jax.config.validation  the whole-config check before anything is read or compiled
  gwtn_jax.config.workdir     a workdir's checks: writable, and what a rerun may change

The schema's names are here at once; `validate`, `check_teacher_dir` and the workdir's names
are loaded on first use, so importing this module still imports no JAX.
"""

from __future__ import annotations

import importlib

from gwtn_jax.config.schema import *  # noqa: F401,F403  pylint: disable=wildcard-import
from gwtn_jax.config.schema import ConfigError  # noqa: F401  (explicit, for readers)

_LAZY = {
    'validate': 'gwtn_jax.config.validation',
    'check_teacher_dir': 'gwtn_jax.config.validation',
    'check_workdir': 'gwtn_jax.config.workdir',
    'check_workdir_config': 'gwtn_jax.config.workdir',
    'changed_fields': 'gwtn_jax.config.workdir',
    'RERUN_FIELDS': 'gwtn_jax.config.workdir',
    'CONFIG_FILE': 'gwtn_jax.config.workdir',
}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
