#!/usr/bin/env bash
# Durable acknowledgements per second of a `delivery = "always"` route at
# 1 KiB, SQLite spool vs PostgreSQL spool (one instance, then two instances
# on one database), measured in the same run (issue 12).
#
#   benches/load/spool_backends.sh       # from anywhere in a clean clone
#
# All on 127.0.0.1: a throwaway PostgreSQL cluster (initdb in a temp dir,
# fsync and synchronous_commit on: the defaults), an nginx upstream that
# answers 200, hookgate from target/release. wrk sends the same signed POST
# (post.lua); every answer must be 202 (wrk counts others as errors and the
# run fails). Rounds interleave the targets. The redelivery worker drains to
# the upstream at the same time, as in production.
#
# Knobs: DURATION=10 (s per run), ROUNDS=2, CONNS=32, HOOKGATE_BIN=,
#        RESULTS=benches/load/results-spool-backends.md
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-32}
RESULTS=${RESULTS:-$HERE/results-spool-backends.md}
log() { echo "[spool-bench] $*" >&2; }
die() { echo "[spool-bench] ERROR: $*" >&2; exit 1; }

command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || die "nginx is missing (apt-get install nginx)"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $PGBIN/postgres ]] || die "PostgreSQL is missing (apt-get install postgresql)"

if [[ -n ${HOOKGATE_BIN:-} ]]; then
  BIN=$HOOKGATE_BIN
else
  (cd "$REPO" && cargo build --release --locked -q)
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/hookgate
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; die "nothing listens on $1"; }

# --- PostgreSQL (as the postgres user when root, like the tests)
AS_PG=()
if [[ $(id -u) == 0 ]]; then
  chown postgres: "$TMP"
  AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
"${AS_PG[@]}" "$PGBIN/initdb" -D "$TMP/pg" -U hookgate --auth=trust -E UTF8 >/dev/null
PG_PORT=$(free_port)
"${AS_PG[@]}" "$PGBIN/postgres" -D "$TMP/pg" -p "$PG_PORT" -k "$TMP" -c listen_addresses=127.0.0.1 2>"$TMP/pg.log" &
PIDS+=($!)
wait_port "$PG_PORT"
# The port opens before recovery ends ("the database system is starting up").
for _ in $(seq 1 200); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.05; done
"$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U hookgate bench
export HOOKGATE_DATABASE_URL="postgres://hookgate@127.0.0.1:$PG_PORT/bench"

# --- upstream
UP_PORT=$(free_port)
mkdir -p "$TMP/up"
cat >"$TMP/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/up; proxy_temp_path $TMP/up; fastcgi_temp_path $TMP/up; uwsgi_temp_path $TMP/up; scgi_temp_path $TMP/up;
  server { listen 127.0.0.1:$UP_PORT; client_max_body_size 2m; location / { return 200 "ok\n"; } }
}
EOF
"$NGINX" -c "$TMP/up/nginx.conf" -p "$TMP/up" &
PIDS+=($!)
wait_port "$UP_PORT"

# --- hookgate configs
export HOOKGATE_BENCH_SECRET=bench-secret-0123456789
head -c 1024 /dev/zero | tr '\0' 'x' >"$TMP/body"
SIGNATURE=$("$BIN" sign --secret-env HOOKGATE_BENCH_SECRET "$TMP/body")
config() { # name spool-keys
  cat >"$TMP/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$(free_port)"
shutdown_timeout = "2s"
[admin]
listen = "127.0.0.1:0"
[spool]
$2
[[route]]
name = "bench"
path = "/webhooks/bench"
upstream = "http://127.0.0.1:$UP_PORT"
secret = { env = "HOOKGATE_BENCH_SECRET" }
delivery = "always"
EOF
  grep -o '127.0.0.1:[0-9]*' "$TMP/$1.toml" | head -1
}
SQLITE_ADDR=$(config sqlite "path = \"$TMP/spool.db\"")
PG_ADDR=$(config pg "backend = \"postgres\"
url = { env = \"HOOKGATE_DATABASE_URL\" }")
PG2_ADDR=$(config pg2 "backend = \"postgres\"
url = { env = \"HOOKGATE_DATABASE_URL\" }")

run_gw() { # name; sets GW_PID (not in $(...): the shell must stay its parent to wait for it)
  HOOKGATE_LOG=warn "$BIN" run --config "$TMP/$1.toml" >>"$TMP/$1.log" 2>&1 &
  GW_PID=$!
}

drive() { # label addr... ; prints acks/s (sum over addrs)
  local label=$1; shift
  local outs=() total=0 errors=0
  for a in "$@"; do
    BODY_FILE=$TMP/body SIGNATURE=$SIGNATURE wrk -t1 -c$((CONNS / $#)) -d"${DURATION}s" \
      -s "$HERE/post.lua" "http://$a/webhooks/bench" >"$TMP/wrk-$label-$a" 2>&1 &
    outs+=($!)
  done
  for p in "${outs[@]}"; do wait "$p"; done
  for a in "$@"; do
    local j; j=$(grep WRK_JSON "$TMP/wrk-$label-$a" | sed 's/WRK_JSON //')
    total=$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(int($total + j['requests']*1e6/j['duration_us']))" "$j")
    errors=$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print($errors + sum(v for k,v in j.items() if k.startswith('err_')))" "$j")
  done
  [[ $errors == 0 ]] || die "$label: $errors requests were not answered 202 (see $TMP)"
  echo "$total"
}

# Each run starts from an empty store: the worker drains more slowly than
# wrk fills, so a run would otherwise inherit the previous run's backlog and
# compete with its redelivery (which made the 2-instance row, run right after
# the 1-instance one, look slower than one instance). The backlog a run
# leaves is logged.
PSQL=("$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U hookgate -d bench -qAtX)
backlog() { # target
  case $1 in
    sqlite) python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from webhook").fetchone()[0])' "$TMP/spool.db" 2>/dev/null || echo "?" ;;
    *) "${PSQL[@]}" -c 'select count(*) from hookgate_webhook' 2>/dev/null || echo "?" ;;
  esac
}
reset_store() { # target
  case $1 in
    sqlite) rm -f "$TMP/spool.db" "$TMP/spool.db-wal" "$TMP/spool.db-shm" ;;
    *) "${PSQL[@]}" -c "DO \$\$ BEGIN IF to_regclass('hookgate_webhook') IS NOT NULL THEN TRUNCATE hookgate_webhook; END IF; END \$\$" ;;
  esac
}

declare -A RESULT
for round in $(seq 1 "$ROUNDS"); do
  for target in sqlite pg pg2; do
    reset_store "$target"
    case $target in
      sqlite) run_gw sqlite; p=$GW_PID; wait_port "${SQLITE_ADDR##*:}"; r=$(drive sqlite "$SQLITE_ADDR"); kill "$p"; wait "$p" || true ;;
      pg) run_gw pg; p=$GW_PID; wait_port "${PG_ADDR##*:}"; r=$(drive pg "$PG_ADDR"); kill "$p"; wait "$p" || true ;;
      pg2) run_gw pg; p=$GW_PID; run_gw pg2; q=$GW_PID; wait_port "${PG_ADDR##*:}"; wait_port "${PG2_ADDR##*:}"
           r=$(drive pg2 "$PG_ADDR" "$PG2_ADDR"); kill "$p" "$q"; wait "$p" || true; wait "$q" || true ;;
    esac
    log "round $round $target: $r acks/s (backlog left: $(backlog "$target"))"
    RESULT[$target]="${RESULT[$target]:-} $r"
  done
done

median() { python3 -c 'import statistics,sys; print(int(statistics.median(map(int, sys.argv[1:]))))' $1; }
S=$(median "${RESULT[sqlite]}"); P=$(median "${RESULT[pg]}"); P2=$(median "${RESULT[pg2]}")
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
{
  echo "# Spool backends: durable acknowledgements per second (always, 1 KiB)"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') local (fsync on, synchronous_commit on), wrk $CONNS connections, ${DURATION}s x $ROUNDS interleaved rounds (median), redelivery to an nginx upstream running meanwhile, each run from an empty store"
  echo
  echo "| store | acks/s | vs SQLite | rounds |"
  echo "| --- | ---: | ---: | --- |"
  echo "| SQLite (1 instance) | $S | 1.00 |${RESULT[sqlite]} |"
  echo "| PostgreSQL (1 instance) | $P | $(ratio "$P" "$S") |${RESULT[pg]} |"
  echo "| PostgreSQL (2 instances, one database) | $P2 | $(ratio "$P2" "$S") |${RESULT[pg2]} |"
} | tee "$RESULTS"
