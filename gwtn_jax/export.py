r"""Ships a network of a run to the stack it will serve from.

  python -m gwtn_jax.export --workdir=RUN --network=thin_gwtn --out=DIR [--seed=0] [--overwrite]

`--network` is a row of the run's report (`thin_gwtn`, `thin_kd`, `thin_scratch`,
`thin_imitated`, `thin_lit`, `small_an`, `small_dan`, `small_scratch`, `wide`), or
`downstream/<row>` for a BERT's downstream classifier of that network. `wide` is also the
run's teacher when it came from `teacher_dir` (an earlier stage, a Hugging Face directory, a
torchvision file). Thin networks are trained once per seed: `--seed` picks one (default: the
first of the config's seeds).

What DIR gets:

- A BERT: a Hugging Face directory that `transformers` loads with `from_pretrained`:
  `model.safetensors` and `config.json` (post-LN: `BertForPreTraining` with an NSP head,
  `BertForMaskedLM` without, `BertForSequenceClassification` for `downstream/...`; pre-LN:
  transformers' `RobertaPreLayerNorm*`, which computes what ours does on right-padded input,
  `gwtn_jax.interop.bert_hf`), and the tokenizer (`vocab.txt`, `tokenizer_config.json`,
  `special_tokens_map.json`), so that `AutoTokenizer.from_pretrained(DIR)` tokenizes as the
  run did.
- A ResNet: `model.safetensors`, a torchvision state dict (names and layout in
  `gwtn_jax.interop.resnet_torch`): an ImageNet ResNet loads into `torchvision.models.resnet50()`
  (etc.) with `strict=True`; a CIFAR ResNet, and AN's/DAN's small networks with their own
  per-layer widths, in the same layout.
- Always `card.json` and `README.md`: the source run, the method, the report's metrics, the
  parameter and FLOP counts (and a ResNet's per-layer widths), and the command that made it.

A refused input (no run, a network not in the report, DIR already holding a model without
`--overwrite`) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import sys
from typing import Any

from absl import flags

from gwtn_jax import cli

MODEL_FILE = 'model.safetensors'
CARD_FILE = 'card.json'
CARD_README = 'README.md'
DOWNSTREAM = 'downstream'
# Files that mark a folder as holding a model (refused unless --overwrite).
_MODEL_FILES = (MODEL_FILE, 'config.json', CARD_FILE, 'pytorch_model.bin')


class ExportError(ValueError):
  """A refused export, in one line."""


@dataclasses.dataclass
class Exported:
  """What `export` wrote."""
  out: str
  network: str
  files: list[str]
  card: dict[str, Any]


def _report(workdir: str) -> dict[str, Any]:
  from gwtn_jax import storage  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'report.json')
  if not storage.exists(path):
    raise ExportError(f'--workdir={workdir} has no report.json: the run has not finished (run '
                      'gwtn_jax.main to the end first)')
  return json.loads(storage.read_text(path))


def available(config, report: dict[str, Any]) -> list[str]:
  """The names `--network` takes for a run."""
  from gwtn_jax import report as report_lib  # pylint: disable=g-import-not-at-top
  rows = [k for k in report if k != report_lib.DOWNSTREAM_TASK]
  if 'wide' not in rows and config.teacher_dir:
    rows.insert(0, 'wide')
  rows += [f'{DOWNSTREAM}/{k}' for k in rows if 'downstream_accuracy' in report.get(k, {}).get(
      'metrics', {})]
  return rows


def _stage_dir(workdir: str, network: str, seed: int) -> tuple[str, str]:
  """(the stage that produced `network`, its folder)."""
  from gwtn_jax.methods import registry  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import layout  # pylint: disable=g-import-not-at-top
  downstream = network.startswith(f'{DOWNSTREAM}/')
  row = network.split('/', 1)[1] if downstream else network
  stage = registry.by_report_key(row)
  once = None if stage is not None and stage.provides_teacher else seed
  if downstream:
    name = registry.per_network_stages()[0]
    return name, os.path.join(workdir, layout.STAGES_DIR, layout.stage_name(name, once, row))
  return stage.name, os.path.join(workdir, layout.STAGES_DIR, layout.stage_name(stage.name, once))


def _check_out(out: str, overwrite: bool) -> None:
  from gwtn_jax import storage  # pylint: disable=g-import-not-at-top
  if storage.isfile(out):
    raise ExportError(f'--out={out} is a file; give a folder')
  if storage.isdir(out) and not overwrite:
    held = [n for n in _MODEL_FILES if storage.exists(os.path.join(out, n))]
    if held:
      raise ExportError(f'--out={out} already holds a model ({", ".join(held)}); pass '
                        '--overwrite to replace it, or choose another folder')


def export(workdir: str, network: str, out: str, seed: int = -1, overwrite: bool = False,
           command: str = '') -> Exported:
  """Writes `network` of the run in `workdir` to `out` (module docstring).

  Raises:
    ExportError, ConfigError, InteropError: one line naming what is wrong.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  from gwtn_jax import storage  # pylint: disable=g-import-not-at-top
  from gwtn_jax.config import schema  # pylint: disable=g-import-not-at-top
  from gwtn_jax.config import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import wordpiece  # pylint: disable=g-import-not-at-top
  from gwtn_jax.interop import sources  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import registry  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import layout  # pylint: disable=g-import-not-at-top

  config = workdir_lib.read_config(workdir)
  report = _report(workdir)
  names = available(config, report)
  if network not in names:
    raise ExportError(f'--network={network} is not in the report of {workdir}; choose one of: '
                      + ', '.join(names))
  seeds = list(config.seeds)
  seed = seeds[0] if seed < 0 else seed
  if seed not in seeds:
    raise ExportError(f'--seed={seed}: the run trained the seeds {seeds}')
  _check_out(out, overwrite)
  text = schema.is_text(config)
  vocab_file = os.path.join(workdir, workdir_lib.VOCAB_FILE)
  info = builders.static_data_info(config)
  if text:
    if not storage.exists(vocab_file):
      raise ExportError(f'{vocab_file} is missing (a run from before the export existed): copy '
                        'the vocab.txt the run trained with there')
    info = dataclasses.replace(info, vocab_size=len(wordpiece.read_vocab(vocab_file)))
  networks = builders.build_networks(config, info)
  stage, folder = _stage_dir(workdir, network, seed)
  downstream = network.startswith(f'{DOWNSTREAM}/')
  row = network.split('/', 1)[-1]
  if downstream:
    role = registry.by_report_key(row).role
    model, task = getattr(networks.downstream, role), networks.downstream.task
  else:
    model, task = _model_of(config, stage, networks, workdir, seed)
  teacher = (sources.identify(config.teacher_dir, 'teacher_dir')
             if row == 'wide' and not downstream and config.teacher_dir else None)
  if teacher is not None and teacher.kind == sources.STAGE:
    folder = teacher.path  # the run's teacher is an earlier run's stage
  if teacher is not None and teacher.kind != sources.STAGE:
    variables, missing = sources.convert(teacher, model)
    if missing:
      raise ExportError(f'teacher_dir={config.teacher_dir} lacks {", ".join(missing)}, which the '
                        'run initialized at random: export its stage folder instead')
    source, steps = config.teacher_dir, 0
  else:
    if not layout.is_complete(os.path.join(folder, layout.FINAL_DIR)):
      raise ExportError(f'{folder} holds no finished network ({network}, seed {seed})')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.eval_shape(lambda r: task.init(model, r, task.sample_batch()),
                              jax.random.key(0))
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          nn.meta.unbox(abstract))
    variables = jax.device_get(checkpoint.restore_final(
        os.path.join(folder, layout.FINAL_DIR), target))
    source = folder
    result = json.loads(storage.read_text(os.path.join(folder, layout.RESULT_FILE)))
    steps = int(result.get('steps', 0))
  variables = jax.tree.map(np.asarray, variables)
  storage.makedirs(out)
  if text:
    files, extra = _write_bert(out, variables, model, vocab_file, config)
  else:
    files, extra = _write_resnet(out, variables, model, steps)
  card = _card(workdir, config, report, network, row, seed, source, variables, extra, command)
  storage.write_text(os.path.join(out, CARD_FILE), json.dumps(card, indent=1) + '\n')
  storage.write_text(os.path.join(out, CARD_README), _card_markdown(card))
  return Exported(out, network, sorted(files + [CARD_FILE, CARD_README]), card)


def _model_of(config, stage: str, networks, workdir: str, seed: int):
  """The network a stage produced (AN's and DAN's small ones have their own widths)."""
  from gwtn_jax import builders  # pylint: disable=g-import-not-at-top
  from gwtn_jax import storage  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import registry  # pylint: disable=g-import-not-at-top
  from gwtn_jax.train import layout  # pylint: disable=g-import-not-at-top
  declared = registry.get(stage)
  found = None
  if declared.arch_from:
    path = os.path.join(workdir, layout.STAGES_DIR, layout.stage_name(declared.arch_from, seed),
                        layout.RESULT_FILE)
    found = json.loads(storage.read_text(path)).get('summary')
  exp = builders.Experiment(mesh=None, rules=(), data=None, task=networks.task,
                            thin=networks.thin, wide=networks.wide,
                            downstream=networks.downstream)
  _, model = builders.build_method(config, stage, exp, found=found)
  return model, networks.task


def _write_bert(out: str, variables, model, vocab_file: str, config):
  from gwtn_jax import storage  # pylint: disable=g-import-not-at-top
  from gwtn_jax.data import wordpiece  # pylint: disable=g-import-not-at-top
  from gwtn_jax.interop import bert_hf  # pylint: disable=g-import-not-at-top
  from gwtn_jax.interop import tensors as tensors_lib  # pylint: disable=g-import-not-at-top
  tokens = wordpiece.read_vocab(vocab_file)
  state, hf_config = bert_hf.from_variables(variables, model, pad_token_id=tokens.index('[PAD]'))
  tensors_lib.write_safetensors(os.path.join(out, MODEL_FILE), state)
  storage.write_text(os.path.join(out, 'config.json'),
                     json.dumps(hf_config, indent=1, sort_keys=True) + '\n')
  bert_hf.write_tokenizer(out, vocab_file, bool(config.data.lowercase), int(config.data.seq_len))
  files = [n for n in storage.listdir(out) if n not in (CARD_FILE, CARD_README)]
  return files, {'format': 'huggingface', 'architectures': hf_config.get('architectures'),
                 'model_type': hf_config.get('model_type')}


def _write_resnet(out: str, variables, model, steps: int):
  from gwtn_jax.interop import resnet_torch  # pylint: disable=g-import-not-at-top
  from gwtn_jax.interop import tensors as tensors_lib  # pylint: disable=g-import-not-at-top
  state = resnet_torch.from_variables(variables, model, num_batches_tracked=steps)
  tensors_lib.write_safetensors(os.path.join(out, MODEL_FILE), state)
  found = resnet_torch.describe(state, 'the export')
  plan = model.width_plan()
  return [MODEL_FILE], {
      'format': 'torchvision state dict (safetensors)', 'architecture': found.describe(),
      'torchvision': f'torchvision.models.{found.name}()' if model.stem == 'imagenet' else None,
      'widths': {'stem': plan.stem, 'inner': list(plan.inner), 'out': list(plan.out)}}


def _card(workdir, config, report, network, row, seed, source, variables, extra,
          command) -> dict[str, Any]:
  from gwtn_jax import report as report_lib  # pylint: disable=g-import-not-at-top
  from gwtn_jax.methods import registry  # pylint: disable=g-import-not-at-top
  entry = report.get(row, {})
  stage = registry.by_report_key(row)
  params = report_lib.count_params(variables)
  return {
      'network': network,
      'source_run': workdir,
      'source': source,
      'seed': seed,
      'method': config.method,
      'stages': list(config.stages) or None,
      'stage': stage.name if stage else None,
      'model': config.model.wide_name if row == 'wide' and config.model.wide_name
               else config.model.name,
      'width': config.wide_width if row == 'wide' else config.thin_width,
      'params': params,
      'flops_per_example': entry.get('flops'),
      'metrics': entry.get('metrics'),
      'spread': entry.get('spread'),
      'train_steps': entry.get('train_steps'),
      **extra,
      'command': command,
      'exported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def _card_markdown(card: dict[str, Any]) -> str:
  lines = [f'# {card["network"]} from {card["source_run"]}', '',
           f'Exported by `{card["command"]}`.' if card['command'] else '', '',
           '| field | value |', '|---|---|']
  for key, value in card.items():
    if key in ('command',):
      continue
    lines.append(f'| {key} | {json.dumps(value) if not isinstance(value, str) else value} |')
  return '\n'.join(lines) + '\n'


def _define_flags() -> None:
  """The command line's flags (defined only when run as a program: `export` is a library
  function too, imported beside `gwtn_jax.main`, whose flags share these names)."""
  flags.DEFINE_string('workdir', None, 'The run (its --workdir).')
  flags.DEFINE_string('network', None, 'A network of the run\'s report (thin_gwtn, wide, ...), '
                      'or downstream/<network> for its classifier.')
  flags.DEFINE_string('out', None, 'The folder to write (local or gs://).')
  flags.DEFINE_integer('seed', -1, 'Which seed\'s thin network (-1: the config\'s first).')
  flags.DEFINE_bool('overwrite', False, 'Replace a model already in --out.')
  flags.mark_flags_as_required(['workdir', 'network', 'out'])


def main(argv):
  if len(argv) > 1:
    cli.refuse(f'unexpected arguments {argv[1:]}; flags are --workdir, --network, --out, '
               '--seed, --overwrite')
  f = flags.FLAGS
  from gwtn_jax.config import schema  # pylint: disable=g-import-not-at-top
  from gwtn_jax.interop import tensors  # pylint: disable=g-import-not-at-top
  command = ' '.join(['python -m gwtn_jax.export'] + [shlex.quote(a) for a in sys.argv[1:]])
  try:
    done = export(f.workdir, f.network, f.out, seed=f.seed, overwrite=f.overwrite,
                  command=command)
  except (ExportError, schema.ConfigError, tensors.InteropError) as e:
    cli.refuse(str(e))
  print(f'{done.network} -> {done.out}: {", ".join(done.files)}')


def _parse_flags(argv):
  """absl's parsing, with a missing or bad flag refused in one line (exit status 2)."""
  try:
    return cli.absl_parse(argv)
  except flags.Error as e:
    cli.refuse(f'{e}; see --helpshort')


def run() -> None:
  """The console script (`gwtn-export`): the same as `python -m gwtn_jax.export`."""
  _define_flags()
  cli.run(__name__, main, _parse_flags)


if __name__ == '__main__':
  run()
