#!/usr/bin/env bash
# A k6 script against a real router and the load backend, all on loopback:
# builds (debug unless PROFILE=release), starts both with a fresh data dir and
# TENANTS tenants, runs SCRIPT (smoke.js; thresholds: no errors, p99 budget),
# then checks the backend's tally: every routed message arrived, in order per
# sender. Knobs: SCRIPT (smoke.js, steady.js, spike.js, soak.js), PROFILE,
# TENANTS (50), and the script's own (VUS, DURATION, P99_MS, RATE, ...), which
# k6 reads from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

PROFILE=${PROFILE:-debug}
TENANTS=${TENANTS:-50}
flag=()
[ "$PROFILE" = release ] && flag=(--release)
cargo build -q "${flag[@]}" --bin whatsapp-router --example load_backend
bin=target/$PROFILE

tmp=$(mktemp -d)
trap 'stop_all; rm -rf "$tmp"' EXIT
backend_port=$(free_port)
router_port=$(free_port)
"$bin/examples/load_backend" "127.0.0.1:$backend_port" 2 >"$tmp/backend.out" 2>"$tmp/backend.err" &
PIDS+=($!)
gen_config "$tmp/router.toml" "$tmp/data" "$router_port" "$backend_port" "$TENANTS"
RUST_LOG=warn "$bin/whatsapp-router" serve --config "$tmp/router.toml" 2>"$tmp/router.err" &
PIDS+=($!)
wait_http "http://127.0.0.1:$router_port/readyz" 30
wait_http "http://127.0.0.1:$backend_port/tally" 10

k6 run --quiet --no-color --summary-export "$tmp/summary.json" \
  -e BASE_URL="http://127.0.0.1:$router_port" -e API_KEY="$API_KEY" -e TENANTS="$TENANTS" \
  "loadtest/${SCRIPT:-smoke.js}"

curl -fsS "http://127.0.0.1:$backend_port/tally" >"$tmp/tally.json"
python3 - "$tmp/summary.json" "$tmp/tally.json" <<'PY'
import json, sys
summary, tally = (json.load(open(p)) for p in sys.argv[1:3])
routed = int(summary["metrics"]["routed"]["count"])
print(f"k6 saw {routed} routed; backend got {tally['total']} for {tally['tenants']} tenants, "
      f"{tally['senders_with_seq']} senders, out_of_order={tally['out_of_order']}, missing={tally['missing']}")
assert routed > 0, "nothing was routed"
assert tally["total"] == routed, "backend count differs from routed answers"
assert tally["out_of_order"] == 0 and tally["missing"] == 0, "per-sender order or loss check failed"
PY
