# Helpers shared by run-smoke.sh and compare.sh (sourced, not run).
# Everything here is loopback only.

API_KEY=${API_KEY:-loadtest-api-key-0123456789}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# gen_config FILE DATA_DIR LISTEN_PORT BACKEND_PORT TENANTS [RUNTIME]
gen_config() {
  local file=$1 data=$2 port=$3 backend=$4 tenants=$5 runtime=${6:-thread-per-core}
  {
    printf 'listen = "127.0.0.1:%s"\nmetrics_listen = "off"\ndata_dir = "%s"\n' "$port" "$data"
    printf 'gateway_phone = "971557357753"\ndrain_timeout_ms = 2000\nruntime = "%s"\nworkers = 0\n' "$runtime"
    printf '[waha]\napi_key = "%s"\n' "$API_KEY"
    printf '[forward]\nurl_template = "http://127.0.0.1:%s/tenants/{tenant_id}/whatsapp"\ntimeout_ms = 5000\n' "$backend"
    for ((i = 1; i <= tenants; i++)); do printf '[[tenants]]\nid = %d\nname = "Tenant %d"\n' "$i" "$i"; done
  } >"$file"
}

# wait_http URL SECONDS: polls until URL answers 200; fails after SECONDS.
wait_http() {
  local url=$1 deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "timed out waiting for $url" >&2
      return 1
    fi
    sleep 0.05
  done
}

# Processes started by the script; stopped by `stop_all` (install it as a trap).
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
