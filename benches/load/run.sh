#!/usr/bin/env bash
# hookgate end-to-end load benchmark (issue 5).
#
#   benches/load/run.sh            # from anywhere in a clean clone
#
# What it does, all on 127.0.0.1 with free ports, in a temp dir:
#   1. installs wrk and nginx (apt-get) if they are missing, builds
#      target/release/hookgate;
#   2. starts a trivial upstream (a second nginx instance: `return 200`), the
#      hookgate gateway, and an nginx `proxy_pass` with upstream keep-alive and
#      no verification, both proxying to that same upstream;
#   3. checks that every target answers the signed POST with the upstream's
#      200, and that hookgate answers 401 to a wrong signature — a
#      misconfigured run must not report numbers;
#   4. drives each target with the same signed POST (wrk, keep-alive,
#      64 connections) for each body size, in rounds that interleave the
#      targets (each run waits for a quiet machine: the box may be shared);
#   5. prints one markdown table of medians and writes it to
#      benches/load/results.md (with the raw per-round numbers).
#
# Knobs (environment):
#   DURATION=8       seconds per measured run          ROUNDS=3   rounds (median reported)
#   WARMUP=2         seconds of unmeasured warm-up per target and body (0: none)
#   CONNS=64         wrk connections                   WRK_THREADS  default 1 when pinned, else nproc
#   BODIES="1024:1KiB 16384:16KiB 262144:256KiB 1048576:1MiB"   size:label pairs
#                    per body the report prints hookgate's CPU/req − (nginx CPU/req +
#                    HMAC time of that body), the HMAC timed in the same run (issue 14)
#   PIN=auto         1: wrk+upstream on LOAD_CPU, proxy under test on PROXY_CPU (taskset);
#                    0: no pinning; auto: pin when there are >= 2 CPUs
#   LOAD_CPU=0 PROXY_CPU=1
#   TLS=auto         auto: TLS rows when hookgate supports [server.tls]; 0: never; 1: required
#   ACCESS_LOG=1     1: both proxies write an access-log line per request (as in production);
#                    0: hookgate at HOOKGATE_LOG=warn, nginx access_log off
#   NGINX_LOG_BUFFER=  with ACCESS_LOG=1: nginx's access_log gets `buffer=SIZE flush=1s` (e.g.
#                    64k), so it too writes many lines per system call, as hookgate's text
#                    access lines do (they share a write per scheduler pass); empty (default):
#                    nginx's default, one write per request
#   HOOKGATE_BIN=    use this binary instead of building target/release/hookgate
#   REPLAY=0         1: the replay defence's cost (issue 11) instead: hookgate on the same
#                    route without and with replay_window, both sent a pool of POOL_SIZE=4096
#                    distinct signed bodies in turn (pool.lua), so with the window on every
#                    request is looked up, forwarded and recorded (REPLAY_WINDOW=50ms is
#                    shorter than the pool's cycle: a body's entry has expired when it comes
#                    round again; the run fails if any request was answered as a repeat).
#                    No direct, nginx or TLS rows; RESULTS defaults to results-replay.md
#   REPLAY_SPOOL=0   1 (with REPLAY=1): two more rows for the replay store in the spool's
#                    SQLite file: [spool] + delivery = "on_failure" (healthy upstream:
#                    nothing spooled) without and with replay_window (a primary-key read
#                    per request, a write in the spool's group commit)
#   NOHASH=1         1: also "hookgate, no hash": the same gateway on a shadow route whose
#                    scheme (GitHub's) reads a field the load does not send, so no body is
#                    hashed and the request is forwarded and logged as usual: everything but
#                    the HMAC, measured (the report compares it with nginx). 0: no such row
#   SPOOL=0          1: the spool's cost and speed (issue 9) instead, at 1 KiB: hookgate with
#                    delivery = "sync", "on_failure" (healthy upstream: nothing is kept) and
#                    "always" (every request committed to SQLite before its 202), then a
#                    backlog drain: DRAIN_N=100000 webhooks kept while the route's upstream
#                    is down, then timed from the upstream's start to the last delivery.
#                    No direct, nginx or TLS rows; RESULTS defaults to results-spool.md
#   RESULTS=benches/load/results.md   KEEP_TMP=0 (1: keep the temp dir with configs and logs)
#   MAX_OTHER=0.10   the machine may be shared: before each run wait (up to QUIET_WAIT=120 s)
#   ATTEMPTS=3       until the benchmark cores are idle, and measure again (up to ATTEMPTS
#                    times) when other processes used more than MAX_OTHER of a core
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
DEFAULT_BODIES="1024:1KiB 16384:16KiB 262144:256KiB 1048576:1MiB"
BODIES=${BODIES:-$DEFAULT_BODIES}
PIN=${PIN:-auto}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
TLS=${TLS:-auto}
ACCESS_LOG=${ACCESS_LOG:-1}
NGINX_LOG_BUFFER=${NGINX_LOG_BUFFER:-}
REPLAY=${REPLAY:-0}
POOL_SIZE=${POOL_SIZE:-4096}
REPLAY_WINDOW=${REPLAY_WINDOW:-50ms}
REPLAY_SPOOL=${REPLAY_SPOOL:-0}
SPOOL=${SPOOL:-0}
NOHASH=${NOHASH:-1}
DRAIN_N=${DRAIN_N:-100000}
LUA=$HERE/post.lua
if [[ $SPOOL == 1 ]]; then
  TLS=0
  [[ $BODIES == "$DEFAULT_BODIES" ]] && BODIES="1024:1KiB"
  RESULTS=${RESULTS:-$HERE/results-spool.md}
fi
if [[ $REPLAY == 1 ]]; then
  TLS=0
  LUA=$HERE/pool.lua
  # A pool of POOL_SIZE distinct bodies per size: no 16 KiB and 1 MiB rows
  # unless asked for (4096 × 1 MiB would be a 4 GiB pool file).
  [[ $BODIES == "$DEFAULT_BODIES" ]] && BODIES="1024:1KiB 262144:256KiB"
  RESULTS=${RESULTS:-$HERE/results-replay.md}
fi
RESULTS=${RESULTS:-$HERE/results.md}
KEEP_TMP=${KEEP_TMP:-0}
MAX_OTHER=${MAX_OTHER:-0.10}
ATTEMPTS=${ATTEMPTS:-3}
QUIET_WAIT=${QUIET_WAIT:-120}
ROUTE_PATH=/webhooks/adsumo/prod
SECRET_ENV=HOOKGATE_BENCH_SECRET

log() { echo "[load] $*" >&2; }
die() { echo "[load] ERROR: $*" >&2; exit 1; }
py() { python3 -B "$HERE/bench.py" "$@"; }

# ----------------------------------------------------------------- tools
install_tools() {
  # Debian package names for the commands this script runs.
  local -A pkg_for=([wrk]=wrk [nginx]=nginx [curl]=curl [python3]=python3
                    [taskset]=util-linux [openssl]=openssl [strip]=binutils)
  local missing=() cmd
  for cmd in "${!pkg_for[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || missing+=("${pkg_for[$cmd]}")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing: ${missing[*]}"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install them by hand"
  # The nginx package may try to start the system service; we never use it
  # (our instances have their own prefix, config and ports).
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

NGINX=nginx
install_tools
command -v nginx >/dev/null || NGINX=/usr/sbin/nginx
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 needed"

# ----------------------------------------------------------------- temp dir, cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/hookgate-load.XXXXXX")
PIDS=()       # everything we started, killed by id on exit
PID_NAMES=()

cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  for i in "${!PIDS[@]}"; do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  # Give them 5 s to exit, then KILL whatever is left (still only our pids).
  for _ in $(seq 50); do
    local left=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((rc != 0)) || [[ $KEEP_TMP == 1 ]]; then
    log "configs and logs kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- build
if [[ -n ${HOOKGATE_BIN:-} ]]; then
  SRC_BIN=$HOOKGATE_BIN
else
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) to build hookgate"
  log "building hookgate (cargo build --release)"
  (cd "$REPO" && cargo build --release --quiet)
  # Honour CARGO_TARGET_DIR (relative paths are relative to the repo).
  target_dir=${CARGO_TARGET_DIR:-target}
  case $target_dir in /*) ;; *) target_dir=$REPO/$target_dir ;; esac
  SRC_BIN=$target_dir/release/hookgate
fi
[[ -x $SRC_BIN ]] || die "no hookgate binary at $SRC_BIN"
# Run a private copy: a concurrent `cargo build` in the repo must not swap
# the binary between the measurements and the size/version report.
GIT_REV=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
# Name the uncommitted changes the binary was built with, if any.
DIRTY=$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | awk '{print $2}' | paste -sd, -)
[[ -z $DIRTY ]] || GIT_REV="$GIT_REV: uncommitted changes in $DIRTY"
HG=$TMP/hookgate
cp "$SRC_BIN" "$HG"
HG_SIZE=$(stat -c %s "$HG")
strip -o "$TMP/hookgate.stripped" "$HG"
HG_STRIPPED=$(stat -c %s "$TMP/hookgate.stripped")
HG_VERSION=$("$HG" --version)

# ----------------------------------------------------------------- pinning
NPROC=$(nproc)
if [[ $PIN == auto ]]; then
  if ((NPROC >= 2)); then PIN=1; else PIN=0; fi
fi
if [[ $PIN == 1 ]]; then
  ((NPROC >= 2)) || die "PIN=1 needs 2 CPUs, this machine has $NPROC"
  # One core generates load (wrk) and answers it (upstream); the other runs
  # only the proxy under test, so its CPU time is not disturbed by wrk and
  # "proxy core busy" shows whether the proxy was the bottleneck.
  LOAD_PIN=$LOAD_CPU PROXY_PIN=$PROXY_CPU
  WRK_THREADS=${WRK_THREADS:-1}
  WORKERS=1   # nginx worker_processes: one per core it may use
  PIN_NOTE="pinned with taskset: wrk + upstream on CPU $LOAD_CPU, proxy under test on CPU $PROXY_CPU (hookgate therefore runs its single-threaded runtime; nginx proxy has 1 worker)"
else
  LOAD_PIN="" PROXY_PIN=""
  WRK_THREADS=${WRK_THREADS:-$NPROC}
  WORKERS=auto
  PIN_NOTE="not pinned: wrk, upstream and proxy share all $NPROC CPUs"
fi

# ----------------------------------------------------------------- HMAC rate
# HMAC-SHA256 over the body is the one cost nginx does not pay, so the report
# prints per row hookgate's CPU per request minus (nginx's + the HMAC of that
# body). The HMAC time is measured here, in this run, on the proxy's core:
# the verify bench's `--hmac-rate` mode (raw `Hmac<Sha256>` over the body as
# one slice, median of 15 rounds, a few seconds). Without cargo (HOOKGATE_BIN
# on a machine without Rust) Python's hmac (OpenSSL) is timed instead.
HMAC_FILE=$TMP/hmac.txt
if [[ $REPLAY != 1 && $SPOOL != 1 ]]; then
  if command -v cargo >/dev/null 2>&1; then
    log "timing HMAC-SHA256 per body (cargo bench --bench verify -- --hmac-rate)"
    (cd "$REPO" && cargo bench --quiet --bench verify --no-run) >"$TMP/hmac.log" 2>&1 \
      || die "building the verify bench failed; see $TMP/hmac.log"
    (cd "$REPO" && ${PROXY_PIN:+taskset -c "$PROXY_PIN"} cargo bench --quiet --bench verify -- --hmac-rate) \
      >"$HMAC_FILE" 2>>"$TMP/hmac.log" || die "cargo bench --bench verify -- --hmac-rate failed; see $TMP/hmac.log"
    HMAC_NOTE="HMAC time per body: \`cargo bench --bench verify -- --hmac-rate\` in this run$([[ -n $PROXY_PIN ]] && echo " on CPU $PROXY_PIN") (sha2's Hmac<Sha256> over the body as one slice, median of 15 rounds)"
  else
    log "timing HMAC-SHA256 per body (no cargo: Python's hmac, i.e. OpenSSL)"
    ${PROXY_PIN:+taskset -c "$PROXY_PIN"} python3 -c '
import hashlib, hmac, time
for label, size in (("1KiB", 1024), ("16KiB", 16384), ("256KiB", 262144), ("1MiB", 1048576)):
    body, key, n = b"a" * size, b"k" * 32, max(64, 16 * 1024 * 1024 // size)
    best = []
    for _ in range(15):
        t = time.perf_counter()
        for _ in range(n):
            hmac.new(key, body, hashlib.sha256).digest()
        best.append((time.perf_counter() - t) / n * 1e6)
    us = sorted(best)[7]
    print(f"HMAC_US {label} {size} {us:.3f} - {size / us:.0f}")' >"$HMAC_FILE"
    HMAC_NOTE="HMAC time per body: Python's hmac (OpenSSL) in this run (no cargo to run the verify bench)"
  fi
  log "HMAC-SHA256: $(awk '/^HMAC_US/ {printf "%s %s µs (%s MB/s)  ", $2, $4, $6}' "$HMAC_FILE")"
fi

# ----------------------------------------------------------------- processes
# start_bg NAME CPU LOG CMD... : start CMD in the background (pinned to CPU if
# set; taskset execs, so $! is the process itself) and remember its pid.
start_bg() {
  local name=$1 cpu=$2 logf=$3
  shift 3
  if [[ -n $cpu ]]; then
    taskset -c "$cpu" "$@" >>"$logf" 2>&1 &
  else
    "$@" >>"$logf" 2>&1 &
  fi
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  PID_NAMES+=("$name")
}

all_pids() {  # pid=name,... of everything we started (names for error messages)
  local i out=()
  for i in "${!PIDS[@]}"; do out+=("${PIDS[$i]}=${PID_NAMES[$i]// /-}"); done
  local IFS=,; echo "${out[*]}"
}

read -r UP_PORT NG_PORT HG_PORT HG_ADMIN_PORT NGT_PORT HGT_PORT HGT_ADMIN_PORT HGR_PORT HGR_ADMIN_PORT < <(py ports 9)

# nginx_conf DIR WORKERS ACCESS_LOG_LINE SERVER_BLOCK... : a self-contained
# config (own pid file, logs and temp dirs under DIR), foreground master.
nginx_conf() {
  local dir=$1 workers=$2 access=$3 server=$4 extra=${5:-}
  mkdir -p "$dir"
  local user_line=""
  ((EUID == 0)) && user_line="user root;"   # workers must write under $TMP
  cat >"$dir/nginx.conf" <<EOF
# Generated by benches/load/run.sh
$user_line
daemon off;
master_process on;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    $access
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy_temp;
    fastcgi_temp_path $dir/fastcgi_temp;
    uwsgi_temp_path $dir/uwsgi_temp;
    scgi_temp_path $dir/scgi_temp;
    default_type text/plain;
    # wrk and the proxies reuse connections; nginx's default closes a
    # keep-alive connection after 1000 requests.
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    $extra
    $server
}
EOF
}

start_nginx() {   # start_nginx NAME CPU DIR PORT -> NGINX_MASTER, NGINX_WORKERS (comma list)
  local name=$1 cpu=$2 dir=$3 port=$4
  "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    || die "$name: nginx rejected $dir/nginx.conf"
  start_bg "$name" "$cpu" "$dir/stderr.log" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
  NGINX_MASTER=$LAST_PID
  py wait-port "$port" --name "$name" --pid "$NGINX_MASTER" --log "$dir/error.log"
  local w
  for _ in $(seq 100); do  # the worker is forked right after the master binds
    w=$(py children "$NGINX_MASTER")
    [[ -n $w ]] && break
    sleep 0.05
  done
  [[ -n $w ]] || die "$name: no nginx worker process under master $NGINX_MASTER"
  NGINX_WORKERS=${w// /,}
  local p; for p in $w; do PIDS+=("$p"); PID_NAMES+=("$name worker"); done
}

# Upstream: nginx answering 200 to any POST up to 2 MiB on keep-alive
# connections. `return` reads and discards the body, so the connection stays
# usable; the X-Bench-Upstream header lets the pre-flight check prove that a
# proxied 200 really came from here.
UP_DIR=$TMP/upstream
nginx_conf "$UP_DIR" "$WORKERS" "access_log off;" "
    server {
        listen 127.0.0.1:$UP_PORT;
        client_max_body_size 2m;
        location / { add_header X-Bench-Upstream ok always; return 200 \"ok\\n\"; }
    }"
start_nginx upstream "$LOAD_PIN" "$UP_DIR" "$UP_PORT"

# nginx proxy_pass under test: no verification, upstream keep-alive. It is set
# up to do the same job as hookgate, no more, no less: bodies up to 1 MiB
# (hookgate's max_body_bytes) buffered in memory (nginx's default 16k buffer
# would spill 256 KiB bodies to temp files), the original Host kept and the
# X-Forwarded-* headers set, as hookgate does.
nginx_proxy_conf() {  # nginx_proxy_conf DIR PORT TLS(0|1)
  local dir=$1 port=$2 tls=$3 listen_extra="" tls_lines=""
  if [[ $tls == 1 ]]; then
    listen_extra=" ssl"
    tls_lines="ssl_certificate $TMP/tls/cert.pem; ssl_certificate_key $TMP/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;"
  fi
  local access="access_log off;"
  [[ $ACCESS_LOG == 1 ]] && access="access_log $dir/access.log;"
  [[ $ACCESS_LOG == 1 && -n $NGINX_LOG_BUFFER ]] \
    && access="access_log $dir/access.log combined buffer=$NGINX_LOG_BUFFER flush=1s;"
  nginx_conf "$dir" "$WORKERS" "$access" "
    server {
        listen 127.0.0.1:$port$listen_extra;
        $tls_lines
        client_max_body_size 1m;
        client_body_buffer_size 1m;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }" "
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }"
}

# hookgate under test: one route to the same upstream, secret from the env.
export "$SECRET_ENV"
printf -v "$SECRET_ENV" '%s' "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
HOOKGATE_LOG_LEVEL=info
[[ $ACCESS_LOG == 1 ]] || HOOKGATE_LOG_LEVEL=warn

hookgate_conf() {  # hookgate_conf FILE PORT ADMIN_PORT TLS_BLOCK [ROUTE_LINES]
  cat >"$1" <<EOF
# Generated by benches/load/run.sh
[server]
listen = "127.0.0.1:$2"
shutdown_timeout = "2s"
$4
[admin]
listen = "127.0.0.1:$3"

[[route]]
name = "bench"
path = "$ROUTE_PATH"
upstream = "http://127.0.0.1:$UP_PORT"
secret = { env = "$SECRET_ENV" }
${5:-}
EOF
}

start_hookgate() {  # start_hookgate NAME CONFIG PORT [LOG_FILTER] -> HG_PID
  local name=$1 conf=$2 port=$3 logf=$TMP/$1.log filter=${4:-$HOOKGATE_LOG_LEVEL}
  "$HG" check --config "$conf" >/dev/null || die "$name: hookgate check rejected $conf"
  start_bg "$name" "$PROXY_PIN" "$logf" env HOOKGATE_LOG="$filter" "$HG" run --config "$conf"
  HG_PID=$LAST_PID
  py wait-port "$port" --name "$name" --pid "$HG_PID" --log "$logf"
}

# ----------------------------------------------------------------- bodies
declare -a BODY_LABELS=() BODY_FILES=() BODY_SIGS=() BODY_POOLS=() BODY_SIZE_ARGS=()
for spec in $BODIES; do
  size=${spec%%:*} label=${spec#*:}
  BODY_SIZE_ARGS+=(--body-size "$label=$size")
  f=$TMP/body-$label.json
  py body "$size" "$f"
  BODY_LABELS+=("$label") BODY_FILES+=("$f")
  BODY_SIGS+=("$("$HG" sign --secret-env "$SECRET_ENV" "$f")")
  if [[ $REPLAY == 1 ]]; then
    py pool "$size" "$POOL_SIZE" "$TMP/pool-$label.txt" --secret-env "$SECRET_ENV"
    BODY_POOLS+=("$TMP/pool-$label.txt")
  else
    BODY_POOLS+=("")
  fi
done

# ----------------------------------------------------------------- targets
# The measuring loop runs over this registry; TLS adds two entries.
T_NAMES=() T_LABELS=() T_URLS=() T_CPU_PIDS=() T_RSS_PID=() T_CURL=()
register_target() {  # NAME LABEL URL CPU_PIDS RSS_PID [CURL_OPTS]
  T_NAMES+=("$1") T_LABELS+=("$2") T_URLS+=("$3") T_CPU_PIDS+=("$4") T_RSS_PID+=("$5") T_CURL+=("${6:-}")
}

# post_status URL BODY SIG [CURL_OPTS] -> "CODE UPSTREAM_MARKER"
post_status() {
  local url=$1 body=$2 sig=$3 opts=${4:-} hdrs code
  hdrs=$TMP/preflight.headers
  # shellcheck disable=SC2086  # opts is a word list such as "-k"
  code=$(curl -sS $opts -o /dev/null -D "$hdrs" -w '%{http_code}' --max-time 10 \
    -H 'Content-Type: application/json' -H "X-Adsumo-Signature: $sig" \
    --data-binary "@$body" "$url") || code=curl-failed
  if grep -qi '^x-bench-upstream: ok' "$hdrs" 2>/dev/null; then echo "$code upstream"; else echo "$code -"; fi
}

# What a target's pre-flight must answer (default: the upstream's 200).
declare -A T_EXPECT=()

# Pre-flight: every target must relay the upstream's 200 for every body, and
# every hookgate must refuse a wrong signature with 401 (so it is verifying).
preflight() {
  local i b got bad want
  for i in "${!T_NAMES[@]}"; do
    for b in "${!BODY_LABELS[@]}"; do
      got=$(post_status "${T_URLS[$i]}" "${BODY_FILES[$b]}" "${BODY_SIGS[$b]}" "${T_CURL[$i]}")
      want=${T_EXPECT[${T_NAMES[$i]}]:-200 upstream}
      [[ $got == "$want" ]] \
        || die "pre-flight: ${T_NAMES[$i]} ${BODY_LABELS[$b]} signed POST gave '$got', want '$want'"
      if [[ ${T_NAMES[$i]} == hookgate* && ${T_NAMES[$i]} != *nohash ]]; then
        # Same length, one hex digit changed: only the MAC comparison can reject it.
        bad=${BODY_SIGS[$b]}
        [[ ${bad:0:1} == 0 ]] && bad=1${bad:1} || bad=0${bad:1}
        got=$(post_status "${T_URLS[$i]}" "${BODY_FILES[$b]}" "$bad" "${T_CURL[$i]}")
        [[ $got == "401 -" ]] \
          || die "pre-flight: ${T_NAMES[$i]} ${BODY_LABELS[$b]} with a wrong signature gave '$got', want '401 -'"
      fi
    done
    log "pre-flight ok: ${T_NAMES[$i]} (${T_URLS[$i]})"
  done
}

NG_IDLE_RSS="-"
if [[ $REPLAY != 1 && $SPOOL != 1 ]]; then
  register_target direct "direct to upstream (limit)" "http://127.0.0.1:$UP_PORT$ROUTE_PATH" "" ""

  NG_DIR=$TMP/nginx-proxy
  nginx_proxy_conf "$NG_DIR" "$NG_PORT" 0
  start_nginx nginx-proxy "$PROXY_PIN" "$NG_DIR" "$NG_PORT"
  NG_MASTER=$NGINX_MASTER NG_WORKERS=$NGINX_WORKERS
  NG_IDLE_RSS=$(py rss "${NG_WORKERS%%,*}")
  register_target nginx "nginx proxy_pass" "http://127.0.0.1:$NG_PORT$ROUTE_PATH" "$NG_MASTER,$NG_WORKERS" "${NG_WORKERS%%,*}"
fi

hookgate_conf "$TMP/hookgate.toml" "$HG_PORT" "$HG_ADMIN_PORT" ""
start_hookgate hookgate "$TMP/hookgate.toml" "$HG_PORT"
HG_IDLE_RSS=$(py rss "$HG_PID")   # before any request
register_target hookgate "hookgate" "http://127.0.0.1:$HG_PORT$ROUTE_PATH" "$HG_PID" "$HG_PID"
MAIN_HG_PID=$HG_PID

if [[ $NOHASH == 1 && $REPLAY != 1 && $SPOOL != 1 ]]; then
  # Everything but the HMAC, measured: a shadow route (enforce = false) whose
  # scheme reads X-Hub-Signature-256, which the load does not send, so the
  # body is read and forwarded unhashed and the access line written as for
  # any request (outcome shadow_invalid); the shadow warn line is filtered
  # out (hookgate::proxy=error), as it is not part of a verified request.
  read -r HGN_PORT HGN_ADMIN_PORT < <(py ports 2)
  hookgate_conf "$TMP/hookgate-nohash.toml" "$HGN_PORT" "$HGN_ADMIN_PORT" "" \
    $'scheme = "github"\nenforce = false'
  start_hookgate hookgate-nohash "$TMP/hookgate-nohash.toml" "$HGN_PORT" "$HOOKGATE_LOG_LEVEL,hookgate::proxy=error"
  register_target hookgate+nohash "hookgate, no hash (shadow route, nothing to verify)" \
    "http://127.0.0.1:$HGN_PORT$ROUTE_PATH" "$HG_PID" "$HG_PID"
  HG_PID=$MAIN_HG_PID
fi

if [[ $REPLAY == 1 ]]; then
  # Same binary, same route, replay defence on, pinned to the same proxy
  # core (idle while the other target is measured: targets run in turn).
  hookgate_conf "$TMP/hookgate-replay.toml" "$HGR_PORT" "$HGR_ADMIN_PORT" "" "replay_window = \"$REPLAY_WINDOW\""
  start_hookgate hookgate-replay "$TMP/hookgate-replay.toml" "$HGR_PORT"
  register_target hookgate+replay "hookgate, replay_window" "http://127.0.0.1:$HGR_PORT$ROUTE_PATH" "$HG_PID" "$HG_PID"
  REPLAY_ADMINS=("$HGR_ADMIN_PORT")
  if [[ $REPLAY_SPOOL == 1 ]]; then
    read -r HGS_PORT HGS_ADMIN_PORT HGSR_PORT HGSR_ADMIN_PORT < <(py ports 4)
    replay_spool_lines() {  # replay_spool_lines DB [WINDOW_LINE]
      printf '%s\ndelivery = "on_failure"\n\n[spool]\npath = "%s"\nmax_bytes = "4GiB"\n' "${2:-}" "$1"
    }
    hookgate_conf "$TMP/hookgate-spool.toml" "$HGS_PORT" "$HGS_ADMIN_PORT" "" "$(replay_spool_lines "$TMP/spool-plain.db")"
    start_hookgate hookgate-spool "$TMP/hookgate-spool.toml" "$HGS_PORT"
    register_target hookgate+spool "hookgate, [spool] on_failure" "http://127.0.0.1:$HGS_PORT$ROUTE_PATH" "$HG_PID" "$HG_PID"
    hookgate_conf "$TMP/hookgate-spool-replay.toml" "$HGSR_PORT" "$HGSR_ADMIN_PORT" "" "$(replay_spool_lines "$TMP/spool-replay.db" "replay_window = \"$REPLAY_WINDOW\"")"
    start_hookgate hookgate-spool-replay "$TMP/hookgate-spool-replay.toml" "$HGSR_PORT"
    register_target hookgate+spool+replay "hookgate, [spool] on_failure, replay_window (SQLite store)" "http://127.0.0.1:$HGSR_PORT$ROUTE_PATH" "$HG_PID" "$HG_PID"
    REPLAY_ADMINS+=("$HGSR_ADMIN_PORT")
  fi
fi

if [[ $SPOOL == 1 ]]; then
  read -r HGF_PORT HGF_ADMIN_PORT HGA_PORT HGA_ADMIN_PORT HGD_PORT HGD_ADMIN_PORT DEAD_PORT < <(py ports 7)
  spool_lines() {  # spool_lines DELIVERY DB: the route's delivery, then [spool]
    printf 'delivery = "%s"\n\n[spool]\npath = "%s"\nmax_bytes = "4GiB"\n' "$1" "$2"
  }
  hookgate_conf "$TMP/hookgate-onf.toml" "$HGF_PORT" "$HGF_ADMIN_PORT" "" "$(spool_lines on_failure "$TMP/spool-onf.db")"
  start_hookgate hookgate-onf "$TMP/hookgate-onf.toml" "$HGF_PORT"
  HGF_PID=$HG_PID
  register_target hookgate+onf "hookgate, delivery = on_failure" "http://127.0.0.1:$HGF_PORT$ROUTE_PATH" "$HGF_PID" "$HGF_PID"
  hookgate_conf "$TMP/hookgate-always.toml" "$HGA_PORT" "$HGA_ADMIN_PORT" "" "$(spool_lines always "$TMP/spool-always.db")"
  start_hookgate hookgate-always "$TMP/hookgate-always.toml" "$HGA_PORT"
  HGA_PID=$HG_PID
  register_target hookgate+always "hookgate, delivery = always (202 after fsync)" "http://127.0.0.1:$HGA_PORT$ROUTE_PATH" "$HGA_PID" "$HGA_PID"
  T_EXPECT[hookgate+always]="202 -"
fi

# ----------------------------------------------------------------- TLS rows
# The one function for TLS: a self-signed P-256 cert, then hookgate and nginx
# each terminating TLS and proxying over plain HTTP to the same upstream.
# "Supported" means hookgate's config loader really loads [server.tls]: `check`
# accepts a config with a valid cert AND rejects one whose cert file does not
# exist (a loader that only parses the table accepts both).
TLS_NOTE=""
setup_tls_targets() {
  [[ $TLS == 0 ]] && { TLS_NOTE="TLS rows: skipped (TLS=0)"; return 0; }
  mkdir -p "$TMP/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" 2>/dev/null
  local block="[server.tls]
cert = \"$TMP/tls/cert.pem\"
key = \"$TMP/tls/key.pem\""
  hookgate_conf "$TMP/hookgate-tls.toml" "$HGT_PORT" "$HGT_ADMIN_PORT" "$block"
  hookgate_conf "$TMP/hookgate-tls-missing.toml" "$HGT_PORT" "$HGT_ADMIN_PORT" "${block//cert.pem/no-such-cert.pem}"
  if ! "$HG" check --config "$TMP/hookgate-tls.toml" >/dev/null 2>&1 \
     || "$HG" check --config "$TMP/hookgate-tls-missing.toml" >/dev/null 2>&1; then
    TLS_NOTE="TLS rows: skipped — hookgate TLS not built yet (\`hookgate check\` does not load [server.tls] cert/key)"
    [[ $TLS == 1 ]] && die "TLS=1 but ${TLS_NOTE#TLS rows: skipped — }"
    log "$TLS_NOTE"
    return 0
  fi
  local dir=$TMP/nginx-proxy-tls
  nginx_proxy_conf "$dir" "$NGT_PORT" 1
  start_nginx nginx-proxy-tls "$PROXY_PIN" "$dir" "$NGT_PORT"
  register_target nginx+tls "nginx proxy_pass, TLS" "https://127.0.0.1:$NGT_PORT$ROUTE_PATH" \
    "$NGINX_MASTER,$NGINX_WORKERS" "${NGINX_WORKERS%%,*}" "-k"
  start_hookgate hookgate-tls "$TMP/hookgate-tls.toml" "$HGT_PORT"
  register_target hookgate+tls "hookgate, TLS" "https://127.0.0.1:$HGT_PORT$ROUTE_PATH" "$HG_PID" "$HG_PID" "-k"
  TLS_NOTE="TLS rows: TLS 1.2/1.3 with a self-signed P-256 cert, terminated by the proxy; plain HTTP to the upstream"
}
setup_tls_targets

preflight

# ----------------------------------------------------------------- measure
RAW=$TMP/runs.jsonl
: >"$RAW"

# Access logs grow by ~200 bytes per request; empty them between runs (both
# writers use O_APPEND) after saving any warning/error lines.
trim_logs() {
  local f
  for f in "$TMP"/hookgate*.log; do
    grep -E 'WARN|ERROR' "$f" >>"$TMP/hookgate.warnings" || true
    : >"$f"
  done
  for f in "$TMP"/nginx-proxy*/access.log; do [[ -e $f ]] && : >"$f"; done
  return 0
}

measure() {  # measure TARGET_INDEX BODY_INDEX DURATION ROUND OUT [EXTRA ARGS]
  local i=$1 b=$2 d=$3 r=$4 out=$5
  shift 5
  BODY_FILE=${BODY_FILES[$b]} SIGNATURE=${BODY_SIGS[$b]} POOL_FILE=${BODY_POOLS[$b]} py measure \
    --target "${T_NAMES[$i]}" --body "${BODY_LABELS[$b]}" --url "${T_URLS[$i]}" \
    --lua "$LUA" --duration "$d" --threads "$WRK_THREADS" --conns "$CONNS" \
    --load-cpu "$LOAD_PIN" --proxy-cpu "$PROXY_PIN" \
    --cpu-pids "${T_CPU_PIDS[$i]}" --rss-pid "${T_RSS_PID[$i]}" --watch-pids "$(all_pids)" \
    --round "$r" --out "$out" --log "$TMP/wrk.log" \
    --max-other "$MAX_OTHER" --attempts "$ATTEMPTS" --quiet-wait "$QUIET_WAIT" "$@"
  trim_logs
}

N=${#T_NAMES[@]}
log "measuring: ${#BODY_LABELS[@]} bodies × $ROUNDS rounds × $N targets × ${DURATION}s (+ ${WARMUP}s warm-up each)"
# Bodies in the outer loop, smallest first: a proxy keeps memory it grew for
# 256 KiB bodies, so the 1 KiB rows' peak RSS must be measured before any
# large body was sent. Within a body size the targets are interleaved.
for b in "${!BODY_LABELS[@]}"; do
  if ((WARMUP > 0)); then  # unrecorded: fills connection pools, caches
    for ((i = 0; i < N; i++)); do
      measure "$i" "$b" "$WARMUP" warmup "$TMP/warmup.jsonl" --attempts 1 --quiet-wait 0
    done
  fi
  for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the target order each round so no target always runs first
    # (or always right after the same neighbour).
    for ((k = 0; k < N; k++)); do measure $(((k + r - 1) % N)) "$b" "$DURATION" "$r" "$RAW"; done
  done
done

if [[ $REPLAY == 1 ]]; then
  # The comparison only holds if the replay target forwarded and recorded
  # every request: none may have been answered as a repeat.
  for admin_port in "${REPLAY_ADMINS[@]}"; do
    metrics=$(curl -sS "http://127.0.0.1:$admin_port/metrics")
    repeats=$(awk '/^hookgate_requests_total\{route="bench",outcome="duplicate(_in_flight)?"\}/ {s += $2} END {print s + 0}' <<<"$metrics")
    forwarded=$(awk '/^hookgate_requests_total\{route="bench",outcome="forwarded"\}/ {print $2}' <<<"$metrics")
    log "replay target (admin :$admin_port): $forwarded forwarded, $repeats answered as repeats; $(grep -E '^hookgate_replay_(entries|evictions_total) ' <<<"$metrics" | tr '\n' ' ')"
    [[ $repeats == 0 ]] || die "the replay target answered $repeats requests as repeats: the pool is too small for this rate (raise POOL_SIZE or lower REPLAY_WINDOW)"
  done
fi

SPOOL_NOTES=()
if [[ $SPOOL == 1 ]]; then
  # Group commit: the always gateway logs its commit counts when it stops.
  kill -TERM "$HGA_PID"
  for _ in $(seq 100); do kill -0 "$HGA_PID" 2>/dev/null || break; sleep 0.1; done
  closed=$(grep -h 'spool closed' "$TMP/hookgate-always.log" 2>/dev/null | tail -1 || true)
  commits=$(grep -oE 'commits=[0-9]+' <<<"$closed" | cut -d= -f2 || true)
  writes=$(grep -oE 'writes=[0-9]+' <<<"$closed" | cut -d= -f2 || true)
  max_batch=$(grep -oE 'max_batch=[0-9]+' <<<"$closed" | cut -d= -f2 || true)
  if [[ -n $commits && $commits -gt 0 ]]; then
    avg=$(awk -v w="$writes" -v c="$commits" 'BEGIN {printf "%.1f", w / c}')
    SPOOL_NOTES+=(--meta "group commit (always gateway, last round only: logs are emptied between runs): $writes spool writes (puts + deletes) in $commits commits, $avg per commit on average, at most $max_batch")
    log "group commit: $writes writes in $commits commits ($avg per commit), max batch $max_batch"
  fi

  # Backlog drain: keep DRAIN_N webhooks while the upstream is down (the
  # circuit opens at the first failure, so each is kept without a try), then
  # start the upstream and time the drain to the last delivery.
  steps=$(printf '"200ms",%.0s' $(seq 30))
  steps=${steps%,}
  {
    echo '[server]'
    echo "listen = \"127.0.0.1:$HGD_PORT\""
    echo 'shutdown_timeout = "2s"'
    echo '[admin]'
    echo "listen = \"127.0.0.1:$HGD_ADMIN_PORT\""
    echo '[spool]'
    echo "path = \"$TMP/spool-drain.db\""
    echo 'max_bytes = "4GiB"'
    echo "retry = [$steps]"
    echo '[[route]]'
    echo 'name = "bench"'
    echo "path = \"$ROUTE_PATH\""
    echo "upstream = \"http://127.0.0.1:$DEAD_PORT\""
    echo "secret = { env = \"$SECRET_ENV\" }"
    echo 'delivery = "on_failure"'
  } >"$TMP/hookgate-drain.toml"
  HOOKGATE_LOG_LEVEL=warn
  start_hookgate hookgate-drain "$TMP/hookgate-drain.toml" "$HGD_PORT"
  HGD_PID=$HG_PID
  metric() { curl -sS "http://127.0.0.1:$HGD_ADMIN_PORT/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
  PENDING='hookgate_spool_messages{route="bench",state="pending"}'
  DELIVERED='hookgate_redeliveries_total{route="bench",result="delivered"}'
  log "drain: filling the spool with $DRAIN_N webhooks (upstream down)"
  fill_start=$(date +%s.%N)
  BODY_FILE=${BODY_FILES[0]} SIGNATURE=${BODY_SIGS[0]} start_bg wrk-fill "$LOAD_PIN" "$TMP/wrk-fill.log" \
    wrk -t "$WRK_THREADS" -c "$CONNS" -d 300s -s "$LUA" "http://127.0.0.1:$HGD_PORT$ROUTE_PATH"
  WRK_FILL=$LAST_PID
  while :; do
    sleep 0.2
    n=$(metric "$PENDING")
    n=${n%.*}
    [[ ${n:-0} -ge $DRAIN_N ]] && break
    kill -0 "$WRK_FILL" 2>/dev/null || die "drain: wrk stopped before $DRAIN_N were kept"
  done
  kill -TERM "$WRK_FILL"
  wait "$WRK_FILL" 2>/dev/null || true
  fill_end=$(date +%s.%N)
  sleep 1.2 # the gauges refresh every second
  kept=$(metric "$PENDING")
  kept=${kept%.*}
  db_bytes=$(stat -c %s "$TMP/spool-drain.db")
  fill_secs=$(awk -v a="$fill_start" -v b="$fill_end" 'BEGIN {printf "%.1f", b - a}')
  log "drain: $kept kept in $fill_secs s; spool file $db_bytes bytes; starting the upstream"
  DRAIN_DIR=$TMP/drain-upstream
  nginx_conf "$DRAIN_DIR" "$WORKERS" "access_log off;" "
    server {
        listen 127.0.0.1:$DEAD_PORT;
        client_max_body_size 2m;
        location / { return 200 \"ok\\n\"; }
    }"
  cpu0=$(awk '{print $14 + $15}' "/proc/$HGD_PID/stat")
  t0=$(date +%s.%N)
  start_nginx drain-upstream "$LOAD_PIN" "$DRAIN_DIR" "$DEAD_PORT"
  while :; do
    d=$(metric "$DELIVERED")
    d=${d%.*}
    [[ ${d:-0} -ge $kept ]] && break
    sleep 0.1
  done
  t1=$(date +%s.%N)
  cpu1=$(awk '{print $14 + $15}' "/proc/$HGD_PID/stat")
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  rate=$(awk -v n="$kept" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')
  cpu=$(awk -v c="$((cpu1 - cpu0))" -v n="$kept" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", c / hz / n * 1e6}')
  log "drain: $kept delivered in $secs s after the upstream started: $rate deliveries/s, $cpu µs gateway CPU per delivery"
  SPOOL_NOTES+=(--meta "fill: $kept 1 KiB webhooks kept in $fill_secs s with the upstream down (circuit open: no try), spool file $db_bytes bytes")
  SPOOL_NOTES+=(--meta "backlog drain: $kept delivered in $secs s from the upstream's start to the last 2xx (first probe within 200 ms ±20 %, then redelivery_concurrency = 4): $rate deliveries/s, $cpu µs of gateway CPU per delivery")
fi

# ----------------------------------------------------------------- report
ACCESS_NOTE="access logs: on (hookgate INFO access line per request on stderr → file, the lines of one scheduler pass in one write; nginx access_log → file, $([[ -n $NGINX_LOG_BUFFER ]] && echo "buffer=$NGINX_LOG_BUFFER flush=1s" || echo "unbuffered: one write per request"))"
[[ $ACCESS_LOG == 1 ]] || ACCESS_NOTE="access logs: off (HOOKGATE_LOG=warn; nginx access_log off)"

labels=() ; for i in "${!T_NAMES[@]}"; do labels+=(--label "${T_NAMES[$i]}=${T_LABELS[$i]}"); done
rc=0
py report --results "$RAW" --out "$RESULTS" --rounds "$ROUNDS" \
  --targets "$(IFS=,; echo "${T_NAMES[*]}")" --bodies "$(IFS=,; echo "${BODY_LABELS[*]}")" \
  "${labels[@]}" \
  --meta "$HG_VERSION (git $GIT_REV); binary $HG_SIZE bytes, stripped $HG_STRIPPED bytes (\`strip\` on a copy)" \
  --meta "idle RSS after start: hookgate $HG_IDLE_RSS KiB; nginx proxy worker $NG_IDLE_RSS KiB" \
  --meta "upstream: a second nginx instance ($("$NGINX" -v 2>&1 | sed 's/.*: //'), \`return 200\`, client_max_body_size 2m, keep-alive)" \
  --meta "load: wrk ($(wrk -v 2>&1 | head -1 | awk '{print $2}')), $WRK_THREADS thread(s), $CONNS connections, keep-alive, signed POST (X-Adsumo-Signature) from $(basename "$LUA")$([[ $REPLAY == 1 ]] && echo ", $POOL_SIZE distinct bodies in turn, replay_window = $REPLAY_WINDOW"); ${DURATION}s per run, $ROUNDS interleaved rounds, ${WARMUP}s warm-up" \
  --meta "$PIN_NOTE" \
  --meta "$ACCESS_NOTE" \
  --meta "$TLS_NOTE" \
  ${HMAC_NOTE:+--meta "$HMAC_NOTE"} \
  "${SPOOL_NOTES[@]}" \
  "${BODY_SIZE_ARGS[@]}" --hmac-file "$HMAC_FILE" \
  --max-other "$MAX_OTHER" \
  --command "$([[ $REPLAY == 1 ]] && echo "REPLAY=1 REPLAY_SPOOL=$REPLAY_SPOOL POOL_SIZE=$POOL_SIZE REPLAY_WINDOW=$REPLAY_WINDOW ")$([[ $SPOOL == 1 ]] && echo "SPOOL=1 DRAIN_N=$DRAIN_N ")BODIES=\"$BODIES\" DURATION=$DURATION ROUNDS=$ROUNDS benches/load/run.sh" || rc=$?
if [[ -s $TMP/hookgate.warnings ]]; then
  # Count distinct messages (colour codes and timestamps stripped). Expected
  # with TLS: rustls warns once per connection that wrk sends the IP address
  # as SNI, which RFC 6066 does not allow; it is harmless.
  log "hookgate logged warnings/errors during the run (count, message):"
  sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//' "$TMP/hookgate.warnings" | sort | uniq -c | sort -rn | head -10 >&2
fi
log "table written to $RESULTS"
((rc == 0)) || die "some runs had non-2xx responses or socket errors (see ❌ rows)"
