#!/usr/bin/env bash
# Profiles the release router under the compare.sh follow-up load with
# `perf record -g` and prints the top of the report (README, "Performance").
# Knobs: DURATION (s, 8), CONNS (64), SENDERS (100000), TENANTS (1000), OUT (perf.data path).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
SENDERS=${SENDERS:-100000}
TENANTS=${TENANTS:-1000}
cargo build -q --release --bin whatsapp-router --example load_backend
tmp=$(mktemp -d)
OUT=${OUT:-$tmp/perf.data}
trap 'stop_all; rm -rf "$tmp"' EXIT
backend_port=$(free_port)
router_port=$(free_port)
target/release/examples/load_backend "127.0.0.1:$backend_port" 2 >/dev/null 2>&1 &
PIDS+=($!)
gen_config "$tmp/router.toml" "$tmp/data" "$router_port" "$backend_port" "$TENANTS"
python3 -c "import sys; n,t=int(sys.argv[1]),int(sys.argv[2]); print('{'+','.join(f'\"{971600000000+k}\":{1+k%t}' for k in range(n))+'}')" \
  "$SENDERS" "$TENANTS" >"$tmp/mapping.json"
target/release/whatsapp-router mapping import --config "$tmp/router.toml" "$tmp/mapping.json" >/dev/null
RUST_LOG=warn target/release/whatsapp-router serve --config "$tmp/router.toml" 2>/dev/null &
router_pid=$!
PIDS+=("$router_pid")
wait_http "http://127.0.0.1:$router_port/readyz" 30
wrk -t1 -c"$CONNS" -d2s -s loadtest/followups.lua "http://127.0.0.1:$router_port" -- /api/gateway/waha "$SENDERS" "$API_KEY" >/dev/null
wrk -t1 -c"$CONNS" -d"$((DURATION + 2))s" -s loadtest/followups.lua "http://127.0.0.1:$router_port" \
  -- /api/gateway/waha "$SENDERS" "$API_KEY" | grep RESULT &
wrk_pid=$!
sleep 1
perf stat -x, -e context-switches,cpu-migrations,raw_syscalls:sys_enter,task-clock -p "$router_pid" -- sleep 3 2>"$tmp/stat" >/dev/null || true
sed 's/^/stat,/' "$tmp/stat" | cut -d, -f1-4
perf record -q -F 2999 -g --call-graph dwarf,16384 -o "$OUT" -p "$router_pid" -- sleep "$DURATION" 2>/dev/null
wait "$wrk_pid"
perf report -i "$OUT" --no-children --percent-limit 0.7 --stdio --sort symbol -g none 2>/dev/null | grep -v "^#" | grep -v "^$" | sed "s/ *-  *-  *$//" | cut -c1-160 | head -70
