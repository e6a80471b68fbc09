#!/usr/bin/env python3
"""System calls, read/write sizes, page faults and user/system CPU per
request, for hookgate and for nginx proxy_pass, under the same wrk load as
benches/load/run.sh (64 keep-alive connections, pinned: wrk + upstream on
CPU 0, proxy on CPU 1).

    benches/load/profile.py BINARY [BINARY2 ...] [--bodies 1024,16384,262144,1048576]
                            [--duration 4] [--window 1.5] [--nginx]

For each body size and target: wrk runs for --duration seconds; in the middle
`perf trace` records every system call of the proxy process for --window
seconds (the proxy's request counter read before and after gives the
per-request figures). A second, separate window without tracing gives
user/system CPU and minor page faults per request from /proc/PID/stat, so the
tracer's own cost is not in them. Needs perf (perf trace), wrk, nginx, root
or perf_event_paranoid <= 1.
"""
import argparse, hashlib, hmac, os, re, shutil, signal, socket, subprocess, sys, tempfile, time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "bench-secret-0123456789abcdef"
TICK = os.sysconf("SC_CLK_TCK")
READS = {"read", "recvfrom", "recvmsg", "readv"}
WRITES = {"write", "writev", "sendto", "sendmsg"}


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d never opened" % port)


def stat(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    # fields after ")": state=0 ... minflt=7 majflt=9 utime=11 stime=12
    return int(f[7]), int(f[11]), int(f[12])


def http_get(port, path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out.decode()


def hookgate_count(admin):
    text = http_get(admin, "/metrics")
    return sum(float(m) for m in re.findall(r'^hookgate_requests_total\{[^}]*\} (\S+)$', text, re.M))


def nginx_count(port):
    # "Active connections: N\n server accepts handled requests\n A H R\n ..."
    lines = http_get(port, "/").split("\r\n\r\n", 1)[1].splitlines()
    return int(lines[2].split()[2])


def body_bytes(size):
    head = b'{"event":"campaign.updated","delivery_id":"bench-0001","data":{"padding":"'
    tail = b'"}}'
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    pad = size - len(head) - len(tail)
    return head + bytes(alphabet[i % len(alphabet)] for i in range(pad)) + tail


def nginx_conf(d, body):
    os.makedirs(d, exist_ok=True)
    open(f"{d}/nginx.conf", "w").write(f"""
daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log {d}/err.log warn;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d}; keepalive_requests 1000000; keepalive_timeout 60s;
  {body} }}
""")
    return f"{d}/nginx.conf"


class Run:
    def __init__(self, a):
        self.a = a
        self.d = tempfile.mkdtemp(prefix="hookgate-profile.")
        self.procs = []

    def start(self, cmd, cpu, log, env=None):
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, env=env,
                             stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if not self.a.keep:
            shutil.rmtree(self.d, ignore_errors=True)
        else:
            print(f"kept {self.d}")

    def setup(self):
        d, a = self.d, self.a
        self.up = free_port()
        conf = nginx_conf(f"{d}/up", f"server {{ listen 127.0.0.1:{self.up}; client_max_body_size 2m;"
                                     f" location / {{ return 200 \"ok\\n\"; }} }}")
        self.start(["nginx", "-c", conf, "-p", f"{d}/up"], 0, f"{d}/up.log")
        wait_port(self.up)
        self.targets = {}
        tls_block, scheme, ng_ssl = "", "http", ""
        if a.tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", f"{d}/key.pem",
                            "-out", f"{d}/cert.pem"], check=True, capture_output=True)
            tls_block = f'[server.tls]\ncert = "{d}/cert.pem"\nkey = "{d}/key.pem"\n'
            scheme = "https"
            ng_ssl = f" ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem"
        self.scheme = scheme
        for i, binary in enumerate(a.binary):
            # Named by file when the binaries' names differ (hookgate vs
            # examples/h1_floor), by position when they do not (before/after).
            bases = [os.path.basename(b) for b in a.binary]
            name = ("hookgate" if len(a.binary) == 1 else
                    bases[i] if len(set(bases)) == len(bases) else f"hookgate[{i}]")
            hg, admin = free_port(), free_port()
            open(f"{d}/hg{i}.toml", "w").write(f"""
[server]
listen = "127.0.0.1:{hg}"
{tls_block}
[admin]
listen = "127.0.0.1:{admin}"
[[route]]
name = "bench"
path = "/hook"
upstream = "http://127.0.0.1:{self.up}"
secret = {{ env = "S" }}
""")
            env = dict(os.environ, S=SECRET, HOOKGATE_LOG=a.log)
            p = self.start([binary, "run", "--config", f"{d}/hg{i}.toml"], 1, f"{d}/hg{i}.log", env)
            wait_port(hg)
            self.targets[name] = (hg, p.pid, lambda admin=admin: hookgate_count(admin))
            if a.no_hash:
                # The same gateway doing everything but the HMAC: a shadow
                # route whose scheme (GitHub's) reads a field the load does
                # not send, so no body is hashed; the request is forwarded
                # and logged as usual (outcome shadow_invalid), and the
                # per-request warn line is filtered out.
                hg2, admin2 = free_port(), free_port()
                conf = open(f"{d}/hg{i}.toml").read()
                conf = conf.replace(f"127.0.0.1:{hg}", f"127.0.0.1:{hg2}") \
                           .replace(f"127.0.0.1:{admin}", f"127.0.0.1:{admin2}")
                conf += 'scheme = "github"\nenforce = false\n'
                open(f"{d}/hg{i}-nohash.toml", "w").write(conf)
                env2 = dict(env, HOOKGATE_LOG=f"{a.log},hookgate::proxy=error")
                p2 = self.start([binary, "run", "--config", f"{d}/hg{i}-nohash.toml"], 1,
                                f"{d}/hg{i}-nohash.log", env2)
                wait_port(hg2)
                self.targets[f"{name} no-hash"] = (hg2, p2.pid,
                                                   lambda admin=admin2: hookgate_count(admin))
        if a.nginx:
            ng, status = free_port(), free_port()
            conf = nginx_conf(f"{d}/ng", f"""
  upstream app {{ server 127.0.0.1:{self.up}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{ng}{ng_ssl}; client_max_body_size 1m; client_body_buffer_size 1m;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; }} }}
  server {{ listen 127.0.0.1:{status}; location / {{ stub_status; }} }}""")
            m = self.start(["nginx", "-c", conf, "-p", f"{d}/ng"], 1, f"{d}/ng.log")
            wait_port(ng)
            kids = open(f"/proc/{m.pid}/task/{m.pid}/children").read().split()
            # stub_status counts its own request too: one per read.
            self.targets["nginx"] = (ng, int(kids[0]), lambda: nginx_count(status) - 1)

    def measure(self, name, size):
        a, d = self.a, self.d
        port, pid, count = self.targets[name]
        body = body_bytes(size)
        bf = f"{d}/body-{size}"
        open(bf, "wb").write(body)
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        env = dict(os.environ, BODY_FILE=bf, SIGNATURE=sig)
        # wrk must outlast every window.
        dur = max(a.duration, int(1.5 + a.window * (3 if a.record else 2)) + 1)
        wrk = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c64", f"-d{dur}s", "-s",
                                f"{HERE}/post.lua", f"{self.scheme}://127.0.0.1:{port}/hook"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        # Untraced window: CPU, faults and peak RSS (VmHWM reset first).
        open(f"/proc/{pid}/clear_refs", "w").write("5")
        s0 = stat(pid); t0 = time.monotonic()
        time.sleep(a.window)
        s1 = stat(pid); t1 = time.monotonic()
        hwm = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:"))
        # Traced window: every system call with its result.
        out = f"{d}/trace-{name}-{size}"
        tr = subprocess.Popen(["perf", "trace", "-p", str(pid), "-o", out])
        time.sleep(0.3)  # perf trace attaches
        c0 = count()
        time.sleep(a.window)
        c1 = count()
        tr.send_signal(signal.SIGINT); tr.wait()
        if a.record:
            # A third window: call graphs (user and kernel) for `perf report`.
            rec = subprocess.Popen(["perf", "record", "-g", "-q", "-p", str(pid), "-o",
                                    f"{a.record}/perf-{name}-{size}.data"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(a.window)
            rec.send_signal(signal.SIGINT); rec.wait()
        wout = wrk.communicate()[0]
        m = re.search(r'WRK_JSON (.*)', wout)
        import json
        w = json.loads(m.group(1))
        rps = w["requests"] / (w["duration_us"] / 1e6)
        if w["err_status"] or w["err_read"] or w["err_write"] or w["err_connect"]:
            print(f"  !! {name} {size}: wrk errors {w}", file=sys.stderr)
        n_untraced = rps * (t1 - t0)
        calls = Counter(); sizes = defaultdict(list)
        line_re = re.compile(r'\): (?:\S+/\d+ )?(\w+)\((.*)\) += (-?\d+)')
        for line in open(out):
            mm = line_re.search(line)
            if not mm:
                continue
            sc, args, ret = mm.group(1), mm.group(2), int(mm.group(3))
            calls[sc] += 1
            if (sc in READS or sc in WRITES) and ret >= 0:
                sizes[sc].append(ret)
        # The trace covers a little more than [c0, c1] (attach and detach),
        # so per-request counts are slightly high, by the same for both targets.
        n_traced = max(1, c1 - c0)
        return {
            "rps": rps,
            "user_us": (s1[1] - s0[1]) / TICK / n_untraced * 1e6,
            "sys_us": (s1[2] - s0[2]) / TICK / n_untraced * 1e6,
            "minflt": (s1[0] - s0[0]) / n_untraced,
            "hwm_mib": hwm / 1024,
            "n_traced": n_traced,
            "calls": calls, "sizes": sizes,
        }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary", nargs="+", help="one or more hookgate binaries (measured in turn, same run); "
                   "target/release/examples/h1_floor takes the same command line")
    p.add_argument("--bodies", default="1024,16384,262144,1048576")
    p.add_argument("--duration", type=int, default=4)
    p.add_argument("--window", type=float, default=1.2)
    p.add_argument("--rounds", type=int, default=1, help="repeat, rotating the target order; median CPU table")
    p.add_argument("--nginx", action="store_true", help="profile nginx proxy_pass too")
    p.add_argument("--no-hash", action="store_true",
                   help="also each hookgate binary on a shadow route that hashes nothing "
                        "(everything but the HMAC, measured)")
    p.add_argument("--record", metavar="DIR", help="also `perf record -g` each target and body into DIR")
    p.add_argument("--tls", action="store_true", help="the proxies terminate TLS (self-signed P-256)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, traces)")
    p.add_argument("--log", default="info", help="HOOKGATE_LOG (info: access log on)")
    a = p.parse_args()
    r = Run(a)
    try:
        r.setup()
        cpu = defaultdict(list)
        for size in [int(s) for s in a.bodies.split(",")]:
          for rnd in range(a.rounds):
            # Rotate the order each round, as run.sh does.
            names = list(r.targets)
            names = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in names:
                m = r.measure(name, size)
                cpu[(size, name)].append((m["user_us"], m["sys_us"], m["hwm_mib"]))
                n = m["n_traced"]
                print(f"## {name} body {size} B: {m['rps']:,.0f} req/s; per request: user {m['user_us']:.1f} µs, "
                      f"sys {m['sys_us']:.1f} µs, minor faults {m['minflt']:.2f}; peak RSS {m['hwm_mib']:.1f} MiB")
                print("  syscalls/req: " + ", ".join(f"{k} {v / n:.2f}" for k, v in m["calls"].most_common(12)))
                for k, v in sorted(m["sizes"].items()):
                    if not v:
                        continue
                    v.sort()
                    print(f"  {k}: {len(v) / n:.2f}/req, bytes min {v[0]} median {v[len(v) // 2]} "
                          f"max {v[-1]} mean {sum(v) / len(v):,.0f}; zero-byte {sum(1 for x in v if x == 0) / n:.2f}/req")
                sys.stdout.flush()
        if a.rounds > 1:
            print(f"\n| body B | target | user µs/req (median of {a.rounds}) | sys µs/req | user+sys µs/req "
                  "| rounds (user+sys) | peak RSS MiB (max) |")
            print("|---|---|---:|---:|---:|---|---:|")
            for (size, name), v in cpu.items():
                med = lambda xs: sorted(xs)[len(xs) // 2]
                tot = [u + k for u, k, _ in v]
                print(f"| {size} | {name} | {med([u for u, _, _ in v]):.1f} | {med([k for _, k, _ in v]):.1f} "
                      f"| {med(tot):.1f} | {', '.join(f'{t:.0f}' for t in tot)} | {max(h for _, _, h in v):.1f} |")
    finally:
        r.close()


if __name__ == "__main__":
    main()
