#!/usr/bin/env bash
# Same-run comparison on this machine, loopback only (README, "Performance"):
#  1. throughput: the same wrk load (-t1 -cCONNS, ~1.5 KB follow-ups of
#     pre-locked senders) against the load backend directly, nginx proxying to
#     it (2 workers, keep-alive upstream), and the router (release, TENANTS
#     tenants, SENDERS senders imported with `mapping import`);
#  2. latency at half the router's peak rate, router vs direct;
#  3. durable first contacts per second (a fresh sender with a deep link each);
#  4. RSS after importing BIG (1M) mappings, and HUGE (10M) if HUGE=1, and the
#     time from start to /readyz 200 at the largest size.
# Knobs: DURATION (s per wrk run, 10), CONNS (64), TENANTS (1000), SENDERS (100000),
# ROUNDS (2: direct/nginx/router alternate, best round reported), BIG (1000000),
# HUGE (0; 1 adds the 10M import, several minutes), MT (1: also a router with
# runtime = "multi-thread", for the runtime-model ratio). Needs wrk and nginx (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
TENANTS=${TENANTS:-1000}
SENDERS=${SENDERS:-100000}
ROUNDS=${ROUNDS:-2}
BIG=${BIG:-1000000}
HUGE=${HUGE:-0}
MT=${MT:-1}

for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "compare.sh needs $tool (apt-get install wrk nginx curl)" >&2; exit 1; }
done
cargo build -q --release --bin whatsapp-router --example load_backend
bin=target/release/whatsapp-router
backend_bin=target/release/examples/load_backend

tmp=$(mktemp -d)
trap 'stop_all; rm -rf "$tmp"' EXIT
echo "compare.sh $(date -u +%FT%TZ) on $(nproc) CPUs; tmp=$tmp"

# cpu_ticks PID...: utime+stime of the processes, in clock ticks.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# gen_mapping FILE COUNT: {"9716xxxxxxxx": tenant, ...}, tenants round robin.
gen_mapping() {
  python3 - "$1" "$2" "$TENANTS" <<'PY'
import sys
path, count, tenants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "w") as f:
    f.write("{")
    step = 100_000
    for start in range(0, count, step):
        end = min(count, start + step)
        f.write(",".join(f'"{971600000000 + k}":{1 + k % tenants}' for k in range(start, end)))
        if end < count:
            f.write(",")
    f.write("}\n")
PY
}

# --- processes -------------------------------------------------------------
backend_port=$(free_port)
"$backend_bin" "127.0.0.1:$backend_port" 2 >"$tmp/backend.out" 2>"$tmp/backend.err" &
backend_pid=$!
PIDS+=("$backend_pid")

nginx_port=$(free_port)
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  client_body_buffer_size 16k;
  upstream backend { server 127.0.0.1:$backend_port; keepalive 128; }
  server {
    listen 127.0.0.1:$nginx_port reuseport;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
nginx -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
nginx_pid=$!
PIDS+=("$nginx_pid")

router_port=$(free_port)
gen_config "$tmp/router.toml" "$tmp/data" "$router_port" "$backend_port" "$TENANTS"
gen_mapping "$tmp/mapping.json" "$SENDERS"
RUST_LOG=warn "$bin" mapping import --config "$tmp/router.toml" "$tmp/mapping.json" >"$tmp/import.out"
echo "imported: $(cat "$tmp/import.out")"
if [ "$MT" = 1 ]; then
  # Same data, its own copy (sled allows one process per database).
  mt_port=$(free_port)
  cp -r "$tmp/data" "$tmp/data-mt"
  gen_config "$tmp/router-mt.toml" "$tmp/data-mt" "$mt_port" "$backend_port" "$TENANTS" multi-thread
  RUST_LOG=warn "$bin" serve --config "$tmp/router-mt.toml" 2>"$tmp/router-mt.err" &
  mt_pid=$!
  PIDS+=("$mt_pid")
  wait_http "http://127.0.0.1:$mt_port/readyz" 30
fi
RUST_LOG=warn "$bin" serve --config "$tmp/router.toml" 2>"$tmp/router.err" &
router_pid=$!
PIDS+=("$router_pid")
wait_http "http://127.0.0.1:$router_port/readyz" 30
wait_http "http://127.0.0.1:$backend_port/tally" 10
sleep 0.5
nginx_pids=("$nginx_pid" $(pgrep -P "$nginx_pid" || true))

# run_wrk NAME PORT CONNS DELAY_MS PIDS...: prints "NAME rps p50 p99 cpu_us_per_req".
run_wrk() {
  local name=$1 port=$2 conns=$3 delay=$4
  shift 4
  local before after out
  before=$(cpu_ticks "$@")
  out=$(wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s -s loadtest/followups.lua "http://127.0.0.1:$port" \
    -- /api/gateway/waha "$SENDERS" "$API_KEY" "$delay" | grep '^RESULT')
  after=$(cpu_ticks "$@")
  python3 - "$name" "$out" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import sys
name, out, before, after, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
kv = dict(p.split("=") for p in out.split()[1:])
reqs = int(kv["requests"])
cpu_us = (after - before) / hz * 1e6 / max(reqs, 1)
bad = int(kv["errors"]) + int(kv["non2xx"])
print(f"{name} {kv['rps']} {kv['p50_us']} {kv['p99_us']} {cpu_us:.1f} {bad}")
PY
}

# Short warm-up of every path (connection pools, caches).
DURATION=2 run_wrk warm "$backend_port" "$CONNS" 0 "$backend_pid" >/dev/null
DURATION=2 run_wrk warm "$nginx_port" "$CONNS" 0 "${nginx_pids[@]}" >/dev/null
DURATION=2 run_wrk warm "$router_port" "$CONNS" 0 "$router_pid" >/dev/null
[ "$MT" = 1 ] && DURATION=2 run_wrk warm "$mt_port" "$CONNS" 0 "$mt_pid" >/dev/null

echo
echo "== throughput: wrk -t1 -c$CONNS -d${DURATION}s, ~1.5 KB follow-ups, $ROUNDS rounds (best shown)"
: >"$tmp/results"
for ((r = 1; r <= ROUNDS; r++)); do
  run_wrk direct "$backend_port" "$CONNS" 0 "$backend_pid" >>"$tmp/results"
  run_wrk nginx "$nginx_port" "$CONNS" 0 "${nginx_pids[@]}" >>"$tmp/results"
  run_wrk router "$router_port" "$CONNS" 0 "$router_pid" >>"$tmp/results"
  if [ "$MT" = 1 ]; then run_wrk router-mt "$mt_port" "$CONNS" 0 "$mt_pid" >>"$tmp/results"; fi
done
if [ "$MT" = 1 ]; then
  kill "$mt_pid" 2>/dev/null || true
  wait "$mt_pid" 2>/dev/null || true
fi
cat "$tmp/results" | sed 's/^/  raw: /'
python3 - "$tmp/results" <<'PY' | tee "$tmp/summary"
import sys
best = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, cpu, bad = line.split()
    row = (float(rps), int(p50), int(p99), float(cpu), int(bad))
    if name not in best or row[0] > best[name][0]:
        best[name] = row
print(f"  {'target':8} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'CPU µs/req':>11} {'errors':>7}")
for name in ("direct", "nginx", "router", "router-mt"):
    if name not in best:
        continue
    rps, p50, p99, cpu, bad = best[name]
    print(f"  {name:8} {rps:9.0f} {p50:8d} {p99:8d} {cpu:11.1f} {bad:7d}")
print(f"  router/nginx = {best['router'][0] / best['nginx'][0]:.2f}   router/direct = {best['router'][0] / best['direct'][0]:.2f}")
if "router-mt" in best:
    print(f"  thread-per-core/multi-thread = {best['router'][0] / best['router-mt'][0]:.2f}")
print(f"PEAK {best['router'][0]:.0f}")
PY
peak=$(awk '/^PEAK/ {print $2}' "$tmp/summary")

echo
# Half the router's peak: a closed loop with a 1 ms pause per request per
# connection (wrk's delay() is in whole ms). The connection count that gives the
# target rate is calibrated per target with a short run, since it depends on latency.
target=$(python3 -c "print(round($peak / 2))")
calibrate() { # calibrate PORT PID: connections for ~$target req/s
  local conns=$((target * 15 / 10000 + 1)) rate
  rate=$(DURATION=3 run_wrk cal "$1" "$conns" 1 "$2" | awk '{print $2}')
  python3 -c "print(max(1, round($conns * $target / max($rate, 1))))"
}
echo "== latency at ~50% of the router's peak ($target of $peak req/s): wrk -t1, 1 ms pause per request"
: >"$tmp/half"
c_direct=$(calibrate "$backend_port" "$backend_pid")
run_wrk direct "$backend_port" "$c_direct" 1 "$backend_pid" >>"$tmp/half"
c_router=$(calibrate "$router_port" "$router_pid")
run_wrk router "$router_port" "$c_router" 1 "$router_pid" >>"$tmp/half"
python3 - "$tmp/half" "$c_direct" "$c_router" <<'PY'
import sys
rows = {l.split()[0]: l.split() for l in open(sys.argv[1])}
d, r = rows["direct"], rows["router"]
print(f"  direct: {float(d[1]):.0f} req/s on {sys.argv[2]} conns, p50 {d[2]} µs, p99 {d[3]} µs")
print(f"  router: {float(r[1]):.0f} req/s on {sys.argv[3]} conns, p50 {r[2]} µs, p99 {r[3]} µs, {r[4]} CPU µs/req")
print(f"  p99 added by the router: {(int(r[3]) - int(d[3])) / 1000:+.2f} ms (target <= 1 ms)")
PY

echo
echo "== durable first contacts: wrk -t1 -c$CONNS -d${DURATION}s, a new sender with a deep link per request"
before=$(cpu_ticks "$router_pid")
wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s loadtest/firsts.lua "http://127.0.0.1:$router_port" \
  -- "$TENANTS" "$API_KEY" 1 | grep '^RESULT' | sed 's/^RESULT/  first contacts:/'
echo "  router CPU: $(( ($(cpu_ticks "$router_pid") - before) * 1000 / $(getconf CLK_TCK) )) ms"
echo "  router RSS after the load: $(rss_mib "$router_pid") MiB (SENDERS=$SENDERS + new locks)"
curl -fsS "http://127.0.0.1:$backend_port/tally" >"$tmp/tally.json"
python3 - "$tmp/tally.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print(f"  backend tally: total {t['total']} ({t['tenants']} tenants; {t['other']} sent to it directly or via nginx)")
PY
stop_all

# size_run COUNT: import COUNT mappings into a fresh data dir, then start the
# router on it and time /readyz; prints import time and RSS, ready time and RSS.
size_run() {
  local count=$1 dir="$tmp/size-$1" port t0 ready_ms pid
  mkdir -p "$dir"
  port=$(free_port)
  gen_config "$dir/router.toml" "$dir/data" "$port" "$backend_port" "$TENANTS"
  gen_mapping "$dir/mapping.json" "$count"
  t0=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$dir/import.rss" "$bin" mapping import --config "$dir/router.toml" "$dir/mapping.json" \
    >"$dir/import.out" 2>/dev/null
  local import_s=$(( ($(date +%s%N) - t0) / 1000000 ))
  rm -f "$dir/mapping.json"
  t0=$(date +%s%N)
  RUST_LOG=warn "$bin" serve --config "$dir/router.toml" 2>"$dir/router.err" &
  pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/readyz" 120
  ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local rss_ready
  rss_ready=$(rss_mib "$pid")
  # Touch senders across the whole range, so the cache and sled's page cache fill.
  wrk -t1 -c"$CONNS" -d5s -s loadtest/followups.lua "http://127.0.0.1:$port" \
    -- /api/gateway/waha "$count" "$API_KEY" 0 >/dev/null 2>&1 || true
  echo "  $count mappings: import $((import_s / 1000)).$(( import_s % 1000 / 100 )) s, import max RSS $(( $(cat "$dir/import.rss") / 1024 )) MiB," \
    "disk $(du -sm "$dir/data" | cut -f1) MiB; start -> /readyz 200 in $ready_ms ms; router RSS $rss_ready MiB at ready," \
    "$(rss_mib "$pid") MiB after 5 s of follow-ups"
  stop_all
  rm -rf "$dir"
}

echo
echo "== size: mapping import, RSS, start -> ready"
"$backend_bin" "127.0.0.1:$backend_port" 2 >/dev/null 2>&1 &
PIDS+=($!)
size_run "$BIG"
if [ "$HUGE" = 1 ]; then
  "$backend_bin" "127.0.0.1:$backend_port" 2 >/dev/null 2>&1 &
  PIDS+=($!)
  size_run 10000000
fi
