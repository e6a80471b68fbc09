#!/usr/bin/env python3
# Instructions per forwarded request (callgrind total Ir, difference
# between a run of N_HI and one of N_LO keep-alive requests, so start-up and
# shutdown cancel out), also without SHA-256: valgrind's CPU has no SHA-NI,
# so sha2 runs its portable code there and its instructions say nothing
# about the real hash cost (the verify bench measures that).
# Usage: benches/load/icount.py BINARY [--keep DIR] [MODE...] [BODY_BYTES...]
# --keep DIR copies each mode's callgrind output of the longer run to
# DIR/callgrind.MODE[.BYTES] for callgrind_annotate --inclusive=yes (function
# names come from the symbol table; build with
# CARGO_PROFILE_RELEASE_DEBUG=true for file:line too).
# (needs valgrind with callgrind_annotate, nginx). Unlike wall-clock load
# runs, instruction counts hold on a busy box. Every request carries a
# distinct body (a counter in it, same size: 1024 bytes unless sizes are
# given), so with replay_window each one is looked up, forwarded and
# recorded. Modes (default: plain), each measured in this run:
#   plain         the route as is
#   replay        + replay_window = "1h" (the in-memory store)
#   spool         + [spool] (SQLite file), delivery = "on_failure": the
#                 healthy upstream's 200 is relayed, nothing is kept
#   spool-replay  spool + replay_window: the replay store in the spool file
#                 (a primary-key read per request, a write in the group commit)
# BINARY `nginx` measures nginx proxy_pass the same way (one process,
# master_process off, keep-alive upstream, X-Forwarded-* set, access_log
# off; mode plain only): the baseline for the same run.
# The "connection tasks" figure (hookgate only) is the instructions inside the
# tasks that serve connections, per request of the longer run: it leaves out
# the runtime's parking between requests, which varies with timing (±1-2k per
# request from run to run on a busy box), so it is the one to compare small
# changes by.
# Callgrind counts every thread's user-space instructions (SQLite's
# included), not the kernel's (fsync): see the wall-clock run.sh for that.
import hashlib, hmac, http.client, os, re, shutil, signal, socket, subprocess, sys, tempfile, time

args = sys.argv[1:]
keep = None
if "--keep" in args:
    i = args.index("--keep")
    if i + 1 >= len(args):
        raise SystemExit("--keep needs a directory")
    keep = args[i + 1]
    del args[i:i + 2]
    os.makedirs(keep, exist_ok=True)
if not args:
    raise SystemExit("usage: icount.py BINARY [--keep DIR] [MODE...] [BODY_BYTES...]")
binary = args[0]
sizes = [int(a) for a in args[1:] if a.isdigit()] or [1024]
modes = [a for a in args[1:] if not a.isdigit()] or ["plain"]
MODES = ("plain", "replay", "spool", "spool-replay")
if binary == "nginx" and modes != ["plain"]:
    raise SystemExit("nginx: mode plain only")
for m in modes:
    if m not in MODES:
        raise SystemExit(f"unknown mode {m!r}; one of {', '.join(MODES)}")
SECRET = "bench-secret-0123456789abcdef"

def signed(i, size):
    """The i-th distinct body of `size` bytes and its signature."""
    head = b'{"event":"x","n":"%08d","pad":"' % i
    body = head + b"a" * (size - len(head) - 2) + b'"}'
    return body, hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def sha_ir(out):
    """Self instructions of SHA-256's compression functions in a callgrind file."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", out],
                          capture_output=True, text=True, check=True).stdout
    total = 0
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S*(sha2::sha256|sha256_)\S*", line)
        if m:
            total += int(m.group(1).replace(",", ""))
    return total

def conn_ir(out):
    """Inclusive instructions of hookgate's connection tasks in a callgrind
    file (None for nginx). Steadier than the whole-process difference: the
    runtime's parking (epoll_wait, timer processing) between requests varies
    with how the client's requests happen to arrive, by ±1-2k per request on
    a busy box; the work done for each request inside its task does not."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
                          capture_output=True, text=True, check=True).stdout
    # The task's own entry is the largest (with debug info, inlined parts
    # show up as further file:function entries of the same name).
    found = [int(m.group(1).replace(",", "")) for m in
             (re.match(r"\s*([\d,]+) \([^)]*\)\s+\S*:hookgate::server::serve::\{\{closure\}\}::\{\{closure\}\} ", line)
              for line in text.splitlines()) if m]
    return max(found) if found else None

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d never opened" % port)

d = tempfile.mkdtemp()
up = free_port()
open(f"{d}/nginx.conf", "w").write(f"""
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/err.log;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{up}; location / {{ return 200 "ok"; }} }} }}
""")
nginx = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d])
wait_port(up)

def run(n, mode, size):
    port, admin = free_port(), free_port()
    extra = ""
    if mode in ("replay", "spool-replay"):
        extra += 'replay_window = "1h"\n'
    if mode in ("spool", "spool-replay"):
        db = f"{d}/spool-{mode}-{n}.db"
        extra += f'delivery = "on_failure"\n[spool]\npath = "{db}"\n'
    open(f"{d}/hg.toml", "w").write(f"""
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[[route]]
name = "a"
path = "/hook"
upstream = "http://127.0.0.1:{up}"
secret = {{ env = "S" }}
{extra}""")
    out = f"{d}/cg.{mode}.{size}.{n}"
    env = dict(os.environ, S=SECRET, HOOKGATE_LOG="info")
    cmd = [binary, "run", "--config", f"{d}/hg.toml"]
    if binary == "nginx":
        open(f"{d}/proxy.conf", "w").write(f"""
daemon off; master_process off; worker_processes 1; pid {d}/proxy.pid; error_log {d}/proxy-err.log;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream app {{ server 127.0.0.1:{up}; keepalive 8; }}
  server {{ listen 127.0.0.1:{port}; client_max_body_size 2m; client_body_buffer_size 1m;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; }} }} }}
""")
        cmd = ["nginx", "-c", f"{d}/proxy.conf", "-p", d]
    # On one CPU, as in the load benchmarks (which pin the proxy to one
    # core): hookgate then runs tokio's single-threaded scheduler, not the
    # work-stealing one (which reads the clock around every task poll).
    p = subprocess.Popen(["taskset", "-c", "0", "valgrind", "--tool=callgrind",
                          f"--callgrind-out-file={out}"] + cmd, env=env,
                         stderr=open(f"{d}/hg.{mode}.{size}.{n}.log", "w"))
    wait_port(port)
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(n):
        body, sig = signed(i, size)
        c.request("POST", "/hook", body, {"X-Adsumo-Signature": sig, "Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        # 200 from the upstream; a duplicate would be the gateway's own 200.
        assert r.status == 200 and r.getheader("X-Hookgate-Duplicate") is None, (mode, i, r.status)
    c.close()
    p.send_signal(signal.SIGTERM); p.wait()
    for line in open(out):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1]), sha_ir(out)

try:
    for size in sizes:
        # Fewer requests for large bodies (valgrind runs ~50x slower).
        n_hi = max(48, min(1800, 2 * 1024 * 1024 // size * 16))
        n_lo = n_hi // 6
        per = {}
        for mode in modes:
            (lo, lo_sha), (hi, hi_sha) = run(n_lo, mode, size), run(n_hi, mode, size)
            per[mode] = (hi - lo) / (n_hi - n_lo)
            sha = (hi_sha - lo_sha) / (n_hi - n_lo)
            if keep:
                suffix = "" if sizes == [1024] else f".{size}"
                shutil.copy(f"{d}/cg.{mode}.{size}.{n_hi}", f"{keep}/callgrind.{mode}{suffix}")
            label = "" if sizes == [1024] else f" body {size} B"
            conn = conn_ir(f"{d}/cg.{mode}.{size}.{n_hi}") if binary != "nginx" else None
            steady = "" if conn is None else \
                f"; connection tasks: {(conn - hi_sha) / n_hi:.0f} per request without SHA-256"
            print(f"{binary} {mode}{label}: {per[mode]:.0f} instructions per request, "
                  f"{per[mode] - sha:.0f} without SHA-256 ({n_lo} / {n_hi} requests: {lo} / {hi} total)"
                  f"{steady}", flush=True)
        for mode, base in (("replay", "plain"), ("spool-replay", "spool"), ("spool-replay", "plain")):
            if mode in per and base in per:
                print(f"{mode} / {base}{'' if sizes == [1024] else f' ({size} B)'}: {per[mode] / per[base]:.3f}")
finally:
    nginx.terminate(); nginx.wait()
