#!/bin/bash
# The newcomer's first command: installs what is needed, builds, and runs
# the demo (native key provider). Where this kernel has no device-mapper,
# the demo runs inside the bundled VM harness (tests/vm/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/build.sh" "$ROOT/build"
if [[ $(id -u) -eq 0 ]] && dmsetup version >/dev/null 2>&1; then
  exec "$ROOT/scripts/demo-inner.sh" "$ROOT/build"
fi
echo "demo: this kernel has no device-mapper (or you are not root); running the demo in the VM harness"
"$ROOT/tests/vm/prepare.sh"
exec "$ROOT/tests/vm/run.sh" -- "$ROOT/scripts/demo-inner.sh" "$ROOT/build"
