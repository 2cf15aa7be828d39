#!/usr/bin/env bash
# optkit gate on optkit's own model server, both ways (docs/gate.md):
#   1. a head whose request path is SPIN_US µs slower (a busy wait in the model server's
#      infer handler: ~10 % of a request's CPU at closed:8 here)  -> regressed, exit 1
#   2. the base against itself (A/A, two checkouts of one commit) -> passed, exit 0
# Both gates use the repository's perf-gate.yaml; the summaries go to $OUT/{slowdown,aa}/.
# Usage: benchmarks/gate_demo.sh   (from the repository root, after `make install`)
set -uo pipefail
SPIN_US=${SPIN_US:-14}
OUT=${OUT:-runs/gate-demo}
ROOT=$(pwd)
OPTKIT=$ROOT/.venv/bin/optkit
demo=$(mktemp -d /tmp/optkit-gate-demo.XXXXXX)
trap 'rm -rf "$demo"' EXIT

# a scratch clone of the committed HEAD: base = it, head = it + the slowdown
git clone -q --no-hardlinks "$ROOT" "$demo/optkit"
cd "$demo/optkit"
git -c advice.detachedHead=false checkout -q --detach
git tag gate-base
"$ROOT/.venv/bin/python" - "$SPIN_US" <<'PY'
import pathlib, sys
path = pathlib.Path("optkit/service/_model_server.py")
anchor = "        req = parse_infer_request(body, binary_header_length(request))\n"
text = path.read_text()
assert text.count(anchor) == 1, "the infer handler moved: update the demo's anchor"
spin = (f"        _until = time.perf_counter() + {float(sys.argv[1]) / 1e6!r}  # gate demo\n"
        "        while time.perf_counter() < _until:\n            pass\n")
path.write_text(text.replace(anchor, anchor + spin))
PY
[ $? = 0 ] || exit 2
git -c user.email=demo@optkit -c user.name=demo commit -qam "demo: the model server's request path ${SPIN_US} µs slower"
git tag gate-head
cd "$ROOT"

status=0
# gate NAME HEAD EXPECTED: one gate of gate-base against HEAD; its exit status must be EXPECTED
gate() {
  local start=$SECONDS code
  "$OPTKIT" gate --repo "$demo/optkit" --spec perf-gate.yaml --base gate-base --head "$2" \
      --out "$OUT/$1"
  code=$?
  echo "gate-demo: $1 gate exit $code in $((SECONDS - start)) s (expected $3)"
  [ "$code" = "$3" ] || status=1
}
gate slowdown gate-head 1
gate aa gate-base 0
exit $status
