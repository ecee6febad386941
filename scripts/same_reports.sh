#!/usr/bin/env bash
# Runs the three refactoring baselines at two revisions and says whether their report.json are
# equal to the last digit (every field but the wall-clock times): what issue 12 asked a
# behaviour-preserving change to prove.
#
#   bash scripts/same_reports.sh BEFORE_REV AFTER_REV [OUT_DIR]
#
# Each revision runs in its own git worktree with this checkout's .venv (about 12 minutes per
# revision on 2 CPU cores). The configs: fashion_mnist.py:smoke, compare_fashion_mnist.py:smoke,
# shakespeare_bert.py:smoke. Exit status 0 when all three are equal. Both revisions share the text
# cache (data.cache_dir), so they read one vocabulary where its cache key is the same.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
before=$1 after=$2 out=${3:-/tmp/gwtn_same_reports}
configs=(fashion_mnist.py:smoke compare_fashion_mnist.py:smoke shakespeare_bert.py:smoke)
export JAX_PLATFORMS=cpu
for rev in "$before" "$after"; do
  tree="$out/tree-$rev"
  [ -d "$tree" ] || git worktree add --detach -f "$tree" "$rev" >/dev/null
  for c in "${configs[@]}"; do
    name=${c%%.py*}
    rm -rf "${out:?}/$rev/$name"
    (cd "$tree" && "$repo/.venv/bin/python" -m gwtn_jax.main --config="configs/$c" \
        --workdir="$out/$rev/$name" > "$out/$rev-$name.log" 2>&1)
  done
done
"$repo/.venv/bin/python" - "$out/$before" "$out/$after" "${configs[@]}" <<'EOF'
import json, sys
a_dir, b_dir, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
strip = lambda r: {k: {f: v for f, v in row.items() if not f.endswith('wall_s')}
                   if isinstance(row, dict) else row for k, row in r.items()}
same = True
for c in configs:
  name = c.split('.py')[0]
  a, b = (json.load(open(f'{d}/{name}/report.json')) for d in (a_dir, b_dir))
  equal = strip(a) == strip(b)
  same &= equal
  print(f'{name}: {"equal" if equal else "DIFFERENT"} ({", ".join(a)})')
sys.exit(0 if same else 1)
EOF
