#!/usr/bin/env bash
# Makes bench/.venv-trl: a venv that sees the main environment's packages (torch, transformers, the
# project) and adds trl 1.12.0 (the last TRL with PPO) and its dependencies inside the venv only, so
# the main environment's transformers cannot change. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-trl"
python="${PYTHON:-python}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv --system-site-packages "$venv"
fi
if ! "$venv/bin/python" -c "import sys, trl; sys.exit(trl.__version__ != '1.12.0')" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet "trl==1.12.0"
fi
"$venv/bin/python" -c "import trl, transformers, torch; print('bench/.venv-trl: trl', trl.__version__, '| transformers', transformers.__version__, '| torch', torch.__version__)"
