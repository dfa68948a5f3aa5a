#!/usr/bin/env bash
# Makes bench/.venv-trl: trl 1.12.0 (the last TRL with PPO) and its own dependencies in a venv of their own,
# on top of the main environment's packages, so that both sides of bench/engine_vs_trl.py run the same
# torch, transformers, tokenizers and numpy. Idempotent.
#
# The main environment is the one of $PYTHON (default: `python`), a venv or not: its site-packages are
# added to the TRL venv's path by a .pth file (a venv's --system-site-packages would show the base
# interpreter's packages instead, not those of a venv it was made from). pip installs trl with the main
# environment's versions of the shared packages as constraints (bench/.venv-trl/constraints.txt, read now),
# and the script ends by comparing both sides' versions: it fails if any differs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-trl"
python="${PYTHON:-python}"
shared="torch transformers tokenizers numpy"
versions() {  # NAME==VERSION per line for the shared packages, as the given python sees them
  "$1" -c "import importlib.metadata as m, sys; print('\n'.join(f'{p}=={m.version(p)}' for p in sys.argv[1:]))" $shared
}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$python" -c "
import sys  # every site-packages the main python reads, in its order (a venv's, and its base's if it sees them)
dirs = dict.fromkeys(p for p in sys.path if p.endswith(('site-packages', 'dist-packages')))
print('import site; ' + '; '.join(f'site.addsitedir({d!r})' for d in dirs))" > "$site/main-environment.pth"
versions "$python" > "$venv/constraints.txt"
if ! "$venv/bin/python" -c "import sys, trl; sys.exit(trl.__version__ != '1.12.0')" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet "trl==1.12.0" -c "$venv/constraints.txt"
fi
if ! diff <(versions "$python") <(versions "$venv/bin/python") >/dev/null; then
  echo "bench/.venv-trl runs other versions than $python: $(versions "$venv/bin/python" | tr '\n' ' ')against $(tr '\n' ' ' < "$venv/constraints.txt")(remove bench/.venv-trl and run this again)" >&2
  exit 1
fi
"$venv/bin/python" -c "import trl; print('bench/.venv-trl: trl', trl.__version__, end=' | ')"
tr '\n' ' ' < "$venv/constraints.txt"; echo "(the same as $python's)"
