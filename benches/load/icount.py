#!/usr/bin/env python3
# Instructions per forwarded 1 KiB request (callgrind total Ir, difference
# between a run of N_HI and one of N_LO keep-alive requests, so start-up and
# shutdown cancel out). Usage: benches/load/icount.py BINARY (needs valgrind,
# nginx). Unlike wall-clock load runs, instruction counts hold on a busy box.
import hashlib, hmac, http.client, os, signal, socket, subprocess, sys, tempfile, time

binary = sys.argv[1]
SECRET = "bench-secret-0123456789abcdef"
body = b'{"event":"x","pad":"' + b"a" * (1024 - 22) + b'"}'
sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()

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

def run(n):
    port, admin = free_port(), free_port()
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
""")
    out = f"{d}/cg.{n}"
    env = dict(os.environ, S=SECRET, HOOKGATE_LOG="info")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
                          "run", "--config", f"{d}/hg.toml"], env=env,
                         stderr=open(f"{d}/hg.{n}.log", "w"))
    wait_port(port)
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n):
        c.request("POST", "/hook", body, {"X-Adsumo-Signature": sig, "Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
    c.close()
    p.send_signal(signal.SIGTERM); p.wait()
    for line in open(out):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])

N_LO, N_HI = 300, 1800
try:
    lo, hi = run(N_LO), run(N_HI)
    print(f"{binary}: {(hi - lo) / (N_HI - N_LO):.0f} instructions per request ({lo} / {hi} total)")
finally:
    nginx.terminate(); nginx.wait()
