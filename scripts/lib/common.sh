# Shared helpers for the scripts in scripts/. Source it; do not run it.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

step() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

# The virtual environment shared by every clone on this machine (see scripts/install-deps).
venv_dir() {
  if [[ -n "${SWITCHYARD_VENV:-}" ]]; then echo "$SWITCHYARD_VENV"; return; fi
  local h; h=$(sha256sum "$ROOT/requirements.txt" | cut -c1-12)
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/venv-$h"
}

# mpirun flags that let tests and the demo run several ranks on a small machine, as root.
mpirun_flags() {
  local f=(--oversubscribe --bind-to none)
  [[ $(id -u) -eq 0 ]] && f+=(--allow-run-as-root)
  echo "${f[@]}"
}
