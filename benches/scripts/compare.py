#!/usr/bin/env python3
"""Side-by-side benchmark: the mock model directly, infergate, nginx, HAProxy and Envoy.

Driven by benches/compare.sh (which installs the tools and builds the binaries); it follows
../shared/BENCHMARKING.md:

* everything on 127.0.0.1, every load run bounded (warm-up + measured window);
* one worker per proxy, access logs off, keep-alive upstreams, the same mock model behind all;
* layout A (throughput, CPU cost): proxy + backend on CPU 0, generator alone on CPU 1,
  closed loop `wrk -t1 -c64` with a 1 KiB JSON POST (plain HTTP, TLS with keep-alive, and
  TLS with a new connection per request);
* layout C (latency): proxy alone on CPU 0, generator + backend on CPU 1, open loop at
  fixed rates (oha when installed, else `infergate-loadtest --rate`);
* >= 3 rounds with the target order rotated; medians [min..max]; ratios vs direct and vs
  infergate; proxy CPU us/request from /proc/PID/stat; an idle check before each run and the
  CPU other processes used during it (runs where they used too much are redone).

Standard library only. Prints one summary table plus details as markdown, writes it to --out.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

PORTS = {
    "mock": 18801,
    "infergate": (18810, 18811, 18819),  # http, https, admin
    "nginx": (18820, 18821),
    "haproxy": (18830, 18831),
    "envoy": (18840, 18841, 18849),
}
PROXY_PATH = "/api/v1/endpoint/bench/score"  # the same URL for every proxy; each maps it to /score
PROXIES = ["infergate", "nginx", "haproxy", "envoy"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc


class Procs:
    """Every process this script starts; all are killed on exit, whatever happens."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: dict[str, subprocess.Popen] = {}
        self.pidfile = work / "pids"
        atexit.register(self.stop_all)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.stop_all()
        sys.exit(128 + signum)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        logf = open(self.work / f"{name}.log", "wb")
        p = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=self.work,
        )
        self.procs[name] = p
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def check(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited with {p.returncode}:\n{tail}")

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.terminate()
                except OSError:
                    pass
        deadline = time.time() + 5
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(st[st.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(d))
    return out


def tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    return seen


def proc_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    f = st[st.rindex(")") + 2 :].split()
    return int(f[11]) + int(f[12])


def tree_ticks(pids: list[int]) -> int:
    return sum(proc_ticks(p) for p in pids)


def machine_ticks() -> tuple[int, int, int, int]:
    """(total, busy by tasks, irq+softirq, steal) over all CPUs, in clock ticks."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total, user + nice + system, irq + softirq, steal


def set_affinity(pids: list[int], cpus: set[int]):
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def busy_percent(seconds: float = 1.0) -> float:
    t0, b0, i0, _ = machine_ticks()
    time.sleep(seconds)
    t1, b1, i1, _ = machine_ticks()
    return 100.0 * ((b1 - b0) + (i1 - i0)) / max(1, t1 - t0)


def wait_idle(threshold: float, max_wait: float) -> tuple[float, float]:
    """Waits until the whole machine is below `threshold` % busy; returns (busy %, waited s)."""
    start = time.time()
    while True:
        b = busy_percent(1.0)
        waited = time.time() - start
        if b < threshold or waited >= max_wait:
            return b, waited


def top_other_processes(exclude: set[int], seconds: float = 1.0, n: int = 5) -> str:
    """Names of the busiest processes outside the benchmark over `seconds`."""

    def snap():
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) not in exclude:
                try:
                    st = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                name = st[st.index("(") + 1 : st.rindex(")")]
                out[int(d)] = (name, proc_ticks(int(d)))
        return out

    a = snap()
    time.sleep(seconds)
    b = snap()
    use = {}
    for pid, (name, t) in b.items():
        d = t - a.get(pid, (name, t))[1]
        if d > 0:
            use[name] = use.get(name, 0) + d
    top = sorted(use.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {100 * v / HZ / seconds:.0f}%" for k, v in top) or "none"


# ---------------------------------------------------------------- readiness and checks


def wait_port(port: int, timeout: float = 15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def post_once(url: str, body: bytes, cafile: Path) -> tuple[int, bytes]:
    m = re.match(r"(https?)://([^/:]+):(\d+)(/.*)", url)
    scheme, host, port, path = m.group(1), m.group(2), int(m.group(3)), m.group(4)
    if scheme == "https":
        ctx = ssl.create_default_context(cafile=str(cafile))
        c = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    else:
        c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def tls_info(port: int, cafile: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return f"{t.version()} {t.cipher()[0]}"


# ---------------------------------------------------------------- configurations


def write_configs(work: Path, mock: int, certs: Path):
    ig_http, ig_https, ig_admin = PORTS["infergate"]
    (work / "infergate.yaml").write_text(
        f"""allowInsecureConnections: true
sslCertPemFile: {certs}/server.pem
sslKeyPemFile: {certs}/server-key.pem
listen: {{http: "127.0.0.1:{ig_http}", https: "127.0.0.1:{ig_https}", admin: "127.0.0.1:{ig_admin}"}}
defaults: {{maxConcurrentRequestsPerInstance: 1000, maxQueueWaitMs: 500, requestTimeoutMs: 5000}}
endpoints:
  - name: bench
    auth: {{mode: none}}
    deployments:
      - name: d
        pods: ["127.0.0.1:{mock}"]
"""
    )
    ng_http, ng_https = PORTS["nginx"]
    (work / "nginx").mkdir(exist_ok=True)
    (work / "nginx.conf").write_text(
        f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx; proxy_temp_path {work}/nginx;
    fastcgi_temp_path {work}/nginx; uwsgi_temp_path {work}/nginx; scgi_temp_path {work}/nginx;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream mock {{
        server 127.0.0.1:{mock};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{ng_http};
        listen 127.0.0.1:{ng_https} ssl;
        ssl_certificate {certs}/server.pem;
        ssl_certificate_key {certs}/server-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location {PROXY_PATH} {{
            proxy_pass http://mock/score;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""
    )
    (work / "haproxy.pem").write_text(
        (certs / "server.pem").read_text() + (certs / "server-key.pem").read_text()
    )
    hp_http, hp_https = PORTS["haproxy"]
    (work / "haproxy.cfg").write_text(
        f"""global
    nbthread 1
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
frontend f
    bind 127.0.0.1:{hp_http}
    bind 127.0.0.1:{hp_https} ssl crt {work}/haproxy.pem
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    default_backend b
backend b
    http-reuse always
    http-request set-path /score
    server mock 127.0.0.1:{mock}
"""
    )
    ev_http, ev_https, ev_admin = PORTS["envoy"]

    def listener(name, port, tls):
        ts = ""
        if tls:
            ts = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: "{certs}/server.pem"}}
              private_key: {{filename: "{certs}/server-key.pem"}}"""
        return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: HTTP1
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "{PROXY_PATH}"}}
                route: {{cluster: mock, prefix_rewrite: "/score"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router{ts}"""

    (work / "envoy.yaml").write_text(
        f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ev_admin}}}}}
static_resources:
  listeners:{listener("plain", ev_http, False)}{listener("tls", ev_https, True)}
  clusters:
  - name: mock
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: mock
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {mock}}}}}}}
"""
    )


def json_body(size: int = 1024) -> bytes:
    """Valid JSON of exactly `size` bytes: a scoring-style payload padded with a string."""
    base = {"data": [[round(0.5 + i / 1000, 3) for i in range(8)] for _ in range(8)], "pad": ""}
    raw = json.dumps(base, separators=(",", ":"))
    pad = size - len(raw)
    if pad < 0:
        raise ValueError("body too small")
    base["pad"] = "x" * pad
    out = json.dumps(base, separators=(",", ":")).encode()
    assert len(out) == size
    return out


# ---------------------------------------------------------------- generators


def run_generator(argv: list[str], cpu: int, timeout: float) -> tuple[str, float, int]:
    """Runs a load generator pinned to `cpu`; returns (stdout+stderr, its CPU s, exit code)."""
    p = subprocess.Popen(
        ["taskset", "-c", str(cpu), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    killer = threading.Timer(timeout, p.kill)
    killer.start()
    chunks = []
    while True:
        b = p.stdout.read(65536)
        if not b:
            break
        chunks.append(b)
    _, status, ru = os.wait4(p.pid, 0)
    killer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    return b"".join(chunks).decode(errors="replace"), ru.ru_utime + ru.ru_stime, p.returncode


def wrk_units(v: str) -> float:
    """A wrk latency figure in microseconds."""
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]


def parse_wrk(out: str) -> dict:
    req = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not req:
        raise ValueError(f"unparsable wrk output:\n{out}")
    secs = float(req.group(2)) * {"s": 1, "ms": 1e-3, "m": 60}[req.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    lat = {p: wrk_units(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    return {
        "requests": int(req.group(1)),
        "elapsed_s": secs,
        "rps": int(req.group(1)) / secs,
        "p50_us": lat.get("50"),
        "p99_us": lat.get("99"),
        "errors": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(int(x) for x in sock.groups()) if sock else 0),
    }


def parse_oha(out: str) -> dict:
    j = json.loads(out[out.index("{") :])
    s = j["summary"]
    lat = j.get("latencyPercentiles", {})
    ok = sum(v for k, v in j.get("statusCodeDistribution", {}).items() if k.startswith("2"))
    total = sum(j.get("statusCodeDistribution", {}).values()) + sum(
        j.get("errorDistribution", {}).values()
    )
    return {
        "requests": total,
        "rps": s["requestsPerSec"],
        "p50_us": lat["p50"] * 1e6,
        "p99_us": lat["p99"] * 1e6,
        "errors": total - ok,
        "late": None,
    }


# ---------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = Path(a.work)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "pids").write_text("")
        self.procs = Procs(self.work)
        self.bin = Path(a.bin)
        self.certs = ROOT / "certs-example"
        self.body = json_body(1024)
        (self.work / "body.json").write_bytes(self.body)
        (self.work / "post.lua").write_text(
            f'local f = io.open("{self.work}/body.json", "rb")\n'
            'wrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        (self.work / "post-close.lua").write_text(
            (self.work / "post.lua").read_text() + 'wrk.headers["Connection"] = "close"\n'
        )
        self.targets = ["direct", *[p for p in PROXIES if p in a.targets]]
        self.runs: list[dict] = []
        self.pids: dict[str, list[int]] = {}
        self.versions: dict[str, str] = {}
        self.tls: dict[str, str] = {}
        self.t0 = time.time()
        self.budget_note = False

    # -- set-up

    def start(self):
        a, w = self.a, self.work
        write_configs(w, PORTS["mock"], self.certs)
        mock = self.procs.start(
            "mock",
            [str(self.bin / "mock-model"), "--listen", f"127.0.0.1:{PORTS['mock']}",
             "--name", "mock", "--latency-ms", "0"],
            env={"TOKIO_WORKER_THREADS": "1"},
        )
        wait_port(PORTS["mock"])
        self.pids["mock"] = [mock.pid]
        if "infergate" in self.targets:
            p = self.procs.start(
                "infergate",
                [str(self.bin / "infergate"), "serve", "--config", str(w / "infergate.yaml"),
                 "--workers", "1"],
                env={"RUST_LOG": "warn"},
            )
            wait_port(PORTS["infergate"][0])
            wait_port(PORTS["infergate"][1])
            self.pids["infergate"] = [p.pid]
        if "nginx" in self.targets:
            p = self.procs.start("nginx", ["nginx", "-c", str(w / "nginx.conf"), "-g", "daemon off;"])
            wait_port(PORTS["nginx"][0])
            time.sleep(0.3)
            self.pids["nginx"] = [p.pid]  # + its worker, found through the tree
        if "haproxy" in self.targets:
            p = self.procs.start("haproxy", ["haproxy", "-f", str(w / "haproxy.cfg"), "-db"])
            wait_port(PORTS["haproxy"][0])
            self.pids["haproxy"] = [p.pid]
        if "envoy" in self.targets:
            p = self.procs.start(
                "envoy",
                [a.envoy, "-c", str(w / "envoy.yaml"), "--concurrency", "1", "-l", "warning",
                 "--disable-hot-restart"],
            )
            wait_port(PORTS["envoy"][0], timeout=30)
            wait_port(PORTS["envoy"][1], timeout=30)
            self.pids["envoy"] = [p.pid]
        time.sleep(0.5)
        self.procs.check()
        # Every target must answer the POST with 200 (infergate: no 401 from key auth).
        for t in self.targets:
            for tls in ([False, True] if t != "direct" else [False]):
                url = self.url(t, tls)
                status, data = post_once(url, self.body, self.certs / "ca.pem")
                if status != 200:
                    raise SystemExit(f"{t}: POST {url} answered {status}: {data[:300]!r}")
                if tls:
                    self.tls[t] = tls_info(int(url.split(":")[2].split("/")[0]), self.certs / "ca.pem")
        self.collect_versions()

    def collect_versions(self):
        def first_line(argv):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                return (r.stdout + r.stderr).strip().splitlines()[0]
            except Exception as e:  # noqa: BLE001 - a version string is best effort
                return f"? ({e})"

        self.versions = {
            "infergate": first_line([str(self.bin / "infergate"), "--version"]),
            "mock-model": first_line([str(self.bin / "mock-model"), "--version"]),
            "nginx": first_line(["nginx", "-v"]),
            "haproxy": first_line(["haproxy", "-v"]),
            "envoy": first_line([self.a.envoy, "--version"]) if "envoy" in self.targets else "-",
            "wrk": first_line(["wrk", "--version"]),
            "open-loop generator": (
                first_line([self.a.oha, "--version"]) if self.a.oha
                else first_line([str(self.bin / "infergate-loadtest"), "--version"])
            ),
        }

    def url(self, target: str, tls: bool) -> str:
        if target == "direct":
            return f"http://127.0.0.1:{PORTS['mock']}/score"
        port = PORTS[target][1 if tls else 0]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}{PROXY_PATH}"

    def layout(self, name: str):
        """A: proxies and backend on CPU 0, generator on CPU 1. C: proxies on CPU 0,
        backend and generator on CPU 1."""
        for t, pids in self.pids.items():
            cpus = {1} if (t == "mock" and name == "C") else {0}
            set_affinity([q for p in pids for q in tree(p)], cpus)

    # -- one run

    def generator_argv(self, scen: dict, url: str, seconds: float, warm: float) -> list[str]:
        if scen["kind"] == "closed":
            script = self.work / ("post-close.lua" if scen.get("close") else "post.lua")
            return ["wrk", "-t1", "-c64", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
        if self.a.oha:
            return [self.a.oha, "--no-tui", "--output-format", "json", "-z", f"{seconds:g}s",
                    "-c", "64", "-q", str(scen["rate"]), "--latency-correction",
                    "-m", "POST", "-T", "application/json", "-D", str(self.work / "body.json"),
                    "--cacert", str(self.certs / "ca.pem"), url]
        return [str(self.bin / "infergate-loadtest"), url, "-r", str(scen["rate"]), "-c", "64",
                "--warmup", f"{warm:g}s", "--duration", f"{seconds:g}s",
                "--body", str(self.work / "body.json"), "--cacert", str(self.certs / "ca.pem"),
                "--threads", "1", "--quiet", "--json", str(self.work / "lt.json")]

    def one_run(self, scen: dict, target: str, rnd: int) -> dict:
        a = self.a
        url = self.url(target, scen["tls"])
        closed = scen["kind"] == "closed"
        use_lt = not closed and not a.oha
        # Warm-up: a separate generator run (wrk, oha); infergate-loadtest has its own.
        if not use_lt:
            warm_argv = self.generator_argv(scen, url, a.warmup, 0)
            run_generator(warm_argv, 1, a.warmup + 30)
        argv = self.generator_argv(scen, url, a.duration, a.warmup)
        mine = {q for pids in self.pids.values() for p in pids for q in tree(p)}
        tpids = [q for p in self.pids.get(target, []) for q in tree(p)] if target != "direct" else []
        bpids = tree(self.pids["mock"][0])
        # Counters around the whole generator process (for infergate-loadtest the warm-up is
        # inside it, so its CPU is scaled to the measured window below).
        t_proxy0, t_back0, t_mine0 = tree_ticks(tpids), tree_ticks(bpids), tree_ticks(list(mine))
        self_ru0 = resource.getrusage(resource.RUSAGE_SELF)
        m0 = machine_ticks()
        w0 = time.time()
        out, gen_cpu, rc = run_generator(argv, 1, a.duration + a.warmup + 60)
        wall = time.time() - w0
        m1 = machine_ticks()
        self_ru1 = resource.getrusage(resource.RUSAGE_SELF)
        t_proxy1, t_back1, t_mine1 = tree_ticks(tpids), tree_ticks(bpids), tree_ticks(list(mine))
        if rc != 0:
            raise RuntimeError(f"generator failed ({rc}) for {target}: {' '.join(argv)}\n{out[-2000:]}")
        if use_lt:
            rep = json.loads((self.work / "lt.json").read_text())["report"]
            res = {
                "requests": rep["requests"],
                "rps": rep["throughput_rps"],
                "p50_us": rep["latency_us"]["p50_us"],
                "p99_us": rep["latency_us"]["p99_us"],
                "errors": rep["errors"]["total"],
                "late": rep.get("late"),
            }
            # Requests in the whole process lifetime (warm-up included) for CPU per request.
            lifetime_requests = rep["requests"] * (a.duration + a.warmup) / a.duration
        elif closed:
            res = parse_wrk(out)
            lifetime_requests = res["requests"]
        else:
            res = parse_oha(out)
            lifetime_requests = res["requests"]
        proxy_s = (t_proxy1 - t_proxy0) / HZ
        back_s = (t_back1 - t_back0) / HZ
        mine_s = (t_mine1 - t_mine0) / HZ
        self_s = (self_ru1.ru_utime + self_ru1.ru_stime) - (self_ru0.ru_utime + self_ru0.ru_stime)
        tot = (m1[0] - m0[0]) / HZ
        busy = ((m1[1] - m0[1]) + (m1[2] - m0[2])) / HZ
        irq = (m1[2] - m0[2]) / HZ
        # CPU used outside the benchmark's processes (generator, all proxies, mock, this script).
        # Interrupt and softirq time (loopback packet processing) is the benchmark's own.
        other_s = max(0.0, busy - irq - mine_s - gen_cpu - self_s)
        res.update(
            scenario=scen["name"], target=target, round=rnd, wall_s=wall,
            proxy_cpu_us_per_req=(1e6 * proxy_s / lifetime_requests) if tpids and lifetime_requests else None,
            backend_cpu_us_per_req=1e6 * back_s / lifetime_requests if lifetime_requests else None,
            generator_cpu_share=gen_cpu / wall,
            machine_busy_pct=100 * busy / tot if tot else 0,
            other_cpu_pct=100 * other_s / tot if tot else 0,  # % of the whole machine (all CPUs)
            other_cpu_core_pct=100 * other_s / wall,  # % of one core
            steal_pct=100 * (m1[3] - m0[3]) / tot if tot else 0,  # the hypervisor's
        )
        return res

    def run_with_redo(self, scen: dict, target: str, rnd: int) -> dict:
        a = self.a
        best = None
        over = a.budget_min > 0 and time.time() - self.t0 > 60 * a.budget_min
        if over and not self.budget_note:
            self.budget_note = True
            log(f"time budget of {a.budget_min:g} min used up: no more idle waits or redos")
        for attempt in range(1 if over else a.redo + 1):
            mine = {q for pids in self.pids.values() for p in pids for q in tree(p)} | {os.getpid()}
            idle, waited = wait_idle(a.idle_threshold, 2.0 if over else a.idle_max_wait)
            who = "" if idle < a.idle_threshold else top_other_processes(mine)
            res = self.one_run(scen, target, rnd)
            res.update(idle_before_pct=idle, idle_waited_s=waited, attempt=attempt + 1,
                       busy_others=who)
            noisy = res["other_cpu_pct"] > a.other_max
            log(
                f"  r{rnd} {scen['name']:<16} {target:<9} {res['rps']:>9.0f} req/s"
                f"  p50 {fmt_us(res['p50_us'])} p99 {fmt_us(res['p99_us'])}"
                f"  proxy {fmt_num(res['proxy_cpu_us_per_req'], 1)} us/req"
                f"  backend {fmt_num(res['backend_cpu_us_per_req'], 1)} us/req"
                f"  err {res['errors']}  idle-before {idle:.0f}%"
                f"  others {res['other_cpu_pct']:.1f}%{'  NOISY' if noisy else ''}"
                + (f" [{who}]" if who else "")
            )
            if best is None or res["other_cpu_pct"] < best["other_cpu_pct"]:
                best = res
            if not noisy:
                break
        best["noisy"] = best["other_cpu_pct"] > a.other_max
        best["attempts"] = attempt + 1
        return best

    def scenarios(self) -> list[dict]:
        a = self.a
        s = [{"name": "A http closed", "kind": "closed", "tls": False, "layout": "A"}]
        if a.tls:
            s.append({"name": "A tls closed", "kind": "closed", "tls": True, "layout": "A"})
            s.append({"name": "A tls new-conn", "kind": "closed", "tls": True, "layout": "A",
                      "close": True})
        for r in a.rates:
            s.append({"name": f"C http {r}/s", "kind": "open", "tls": False, "layout": "C", "rate": r})
        if a.tls:
            for r in a.tls_rates:
                s.append({"name": f"C tls {r}/s", "kind": "open", "tls": True, "layout": "C", "rate": r})
        return s

    def run(self):
        scens = self.scenarios()
        for rnd in range(1, self.a.rounds + 1):
            log(f"round {rnd}/{self.a.rounds}")
            for scen in scens:
                self.layout(scen["layout"])
                targets = [t for t in self.targets if not (scen["tls"] and t == "direct")]
                k = (rnd - 1) % len(targets)
                for t in targets[k:] + targets[:k]:
                    self.procs.check()
                    self.runs.append(self.run_with_redo(scen, t, rnd))
        self.layout("A")

    # -- perf profile of infergate

    def perf(self) -> str | None:
        if not shutil.which("perf") or "infergate" not in self.pids:
            return None
        self.layout("A")
        pid = self.pids["infergate"][0]
        data = self.work / "perf.data"
        url = self.url("infergate", False)
        wait_idle(self.a.idle_threshold, self.a.idle_max_wait)
        rec = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-p", str(pid),
             "-o", str(data), "--", "sleep", str(self.a.duration)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        out, _, _ = run_generator(
            ["wrk", "-t1", "-c64", f"-d{self.a.duration + 1:g}s", "-s", str(self.work / "post.lua"), url],
            1, self.a.duration + 60,
        )
        _, err = rec.communicate(timeout=60)
        if rec.returncode != 0:
            return f"perf record failed: {err.decode(errors='replace')[-500:]}"
        rps = parse_wrk(out)["rps"]

        def report(*extra):
            r = subprocess.run(
                ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--percent-limit",
                 "0.8", "-g", "none", *extra],
                capture_output=True, text=True, timeout=300,
            )
            return "\n".join(l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#"))

        by_sym = report("--sort", "dso,sym")
        by_dso = report("--sort", "dso")
        by_thread = report("--sort", "comm")
        all_syms = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
             "--percent-limit", "0", "--sort", "dso,sym"],
            capture_output=True, text=True, timeout=300,
        ).stdout
        (self.work / "perf-symbols.txt").write_text(all_syms)
        # Syscalls and context switches per request, every proxy, same load (layout A).
        rows = ["| proxy | req/s (while counted) | syscalls / req | context switches / req | proxy CPU us/req |",
                "|---|---|---|---|---|"]
        for t in [t for t in self.targets if t != "direct"]:
            pids = [q for p in self.pids[t] for q in tree(p)]
            wait_idle(self.a.idle_threshold, min(60.0, self.a.idle_max_wait))
            st = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches",
                 "-p", ",".join(map(str, pids)), "--", "sleep", str(self.a.duration)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            c0 = tree_ticks(pids)
            out, _, _ = run_generator(
                ["wrk", "-t1", "-c64", f"-d{self.a.duration + 1:g}s", "-s", str(self.work / "post.lua"),
                 self.url(t, False)], 1, self.a.duration + 60,
            )
            c1 = tree_ticks(pids)
            _, err = st.communicate(timeout=60)
            w = parse_wrk(out)
            cnt = {}
            for line in err.decode(errors="replace").splitlines():
                f = line.split(",")
                if len(f) > 3 and f[0].strip().isdigit():
                    cnt[f[2]] = int(f[0])
            n = w["rps"] * self.a.duration  # requests inside perf's window (approximately)
            rows.append(
                f"| {t} | {w['rps']:,.0f} | {cnt.get('raw_syscalls:sys_enter', 0) / n:.1f} "
                f"| {cnt.get('context-switches', 0) / n:.2f} | {1e6 * (c1 - c0) / HZ / w['requests']:.1f} |"
            )
        counts = "\n".join(rows)
        return (
            "Syscalls and context switches per request (`perf stat -e raw_syscalls:sys_enter,"
            f"context-switches -p <proxy>` for {self.a.duration:g} s under the layout A closed loop, "
            "plain HTTP; the proxy's own counts, generator and mock excluded):\n\n" + counts + "\n\n"
            f"`perf record -e cpu-clock -F 2000 -g -p <infergate>` for {self.a.duration:g} s during "
            f"`taskset -c 1 wrk -t1 -c64` (plain HTTP, layout A; {rps:,.0f} req/s while profiled).\n\n"
            "Self time by shared object, by thread, and by crate (infergate's own symbols grouped "
            "by their first path segment; `[kernel]`: kernel symbols):\n\n```text\n" + by_dso
            + "\n\n" + by_thread + "\n\n" + by_crate(all_syms) + "\n```\n\n"
            "Top symbols (self time, >= 0.8%):\n\n```text\n" + by_sym + "\n```\n"
        )


# ---------------------------------------------------------------- report


def by_crate(perf_report: str, top: int = 14) -> str:
    """Sums `perf report --sort dso,sym` self time by crate (first path segment of the symbol)."""
    acc: dict[str, float] = {}
    for line in perf_report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        if kind == "k":
            key = "[kernel]"
        elif dso.startswith("lib"):
            key = f"[{dso}]"
        else:
            s = sym.lstrip("<&*").replace("dyn ", "")
            key = re.split(r"::|<| as |\[", s, maxsplit=1)[0] or sym[:30]
        acc[key] = acc.get(key, 0.0) + pct
    rows = sorted(acc.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"{v:7.2f}%  {k}" for k, v in rows)


def fmt_us(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"


def fmt_num(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def mmm(xs, nd=0, unit=""):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{fmt_num(statistics.median(xs), nd)}{unit} [{fmt_num(min(xs), nd)}..{fmt_num(max(xs), nd)}]"


def ratio(a, b, nd=2):
    return "-" if a is None or b in (None, 0) else f"{a / b:.{nd}f}"


def render(bench: Bench, perf: str | None, started: str, cmdline: str) -> str:
    a, runs = bench.a, bench.runs

    def pick(scen, target, key):
        return [r[key] for r in runs if r["scenario"] == scen and r["target"] == target]

    def m(scen, target, key):
        return med(pick(scen, target, key))

    proxies = [t for t in bench.targets if t != "direct"]
    L = []
    L.append(f"Run {started}: {a.rounds} round(s), warm-up {a.warmup:g} s + {a.duration:g} s per run, "
             f"targets rotated each round. Medians [min..max] over the rounds.\n")
    # -- the summary table
    A = "A http closed"
    d_rps = m(A, "direct", "rps")
    i_rps = m(A, "infergate", "rps")
    hdr = ["target", "req/s (A, plain)", "x direct", "x infergate", "proxy CPU us/req"]
    if a.tls:
        hdr += ["TLS req/s (A)", "TLS x plain", "TLS CPU us/req", "new TLS conn/s"]
    for r in a.rates:
        hdr.append(f"added p50 / p99 at {r}/s (C)")
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for t in bench.targets:
        rps = m(A, t, "rps")
        row = [t, mmm(pick(A, t, "rps")), ratio(rps, d_rps, 3), ratio(rps, i_rps),
               mmm(pick(A, t, "proxy_cpu_us_per_req"), 1) if t != "direct" else "-"]
        if a.tls:
            if t == "direct":
                row += ["-", "-", "-", "-"]
            else:
                trps = m("A tls closed", t, "rps")
                row += [mmm(pick("A tls closed", t, "rps")), ratio(trps, rps),
                        mmm(pick("A tls closed", t, "proxy_cpu_us_per_req"), 1),
                        mmm(pick("A tls new-conn", t, "rps"))]
        for r in a.rates:
            s = f"C http {r}/s"
            if t == "direct":
                row.append(f"{fmt_us(m(s, t, 'p50_us'))} / {fmt_us(m(s, t, 'p99_us'))} (direct itself)")
            else:
                p50 = m(s, t, "p50_us")
                p99 = m(s, t, "p99_us")
                d50, d99 = m(s, "direct", "p50_us"), m(s, "direct", "p99_us")
                row.append(
                    "-" if None in (p50, p99, d50, d99) else f"+{p50 - d50:,.0f} / +{p99 - d99:,.0f} us"
                )
        L.append("| " + " | ".join(row) + " |")
    gen = "oha" if a.oha else "infergate-loadtest --rate"
    L.append("")
    L.append(
        "Layout A: proxy + mock on CPU 0, `wrk -t1 -c64` (1 KiB JSON POST, keep-alive) alone on CPU 1. "
        "\"new TLS conn/s\": the same with `Connection: close` (a full TLS handshake per request). "
        f"Layout C: proxy alone on CPU 0, mock + `{gen}` (64 connections, open loop) on CPU 1; "
        "added latency = the proxy's median percentile minus the direct run's at the same rate. "
        "Proxy CPU: utime + stime of the proxy's processes from /proc/PID/stat over the run, "
        "divided by the requests of the run. Differences under ~10% are ties."
    )
    # -- details
    L.append("\n#### All scenarios (medians [min..max])\n")
    L.append("| scenario | target | req/s | p50 | p99 | proxy CPU us/req | backend CPU us/req | errors | late (open loop) | others' CPU % (max) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for scen in dict.fromkeys(r["scenario"] for r in runs):
        for t in bench.targets:
            rs = [r for r in runs if r["scenario"] == scen and r["target"] == t]
            if not rs:
                continue
            late = [r.get("late") for r in rs if r.get("late") is not None]
            L.append(
                f"| {scen} | {t} | {mmm([r['rps'] for r in rs])} | {fmt_us(med([r['p50_us'] for r in rs]))} "
                f"| {fmt_us(med([r['p99_us'] for r in rs]))} | {mmm([r['proxy_cpu_us_per_req'] for r in rs], 1)} "
                f"| {fmt_num(med([r['backend_cpu_us_per_req'] for r in rs]), 1)} "
                f"| {sum(r['errors'] for r in rs)} | {fmt_num(med(late)) if late else '-'} "
                f"| {max(r['other_cpu_pct'] for r in rs):.1f}{' (noisy)' if any(r['noisy'] for r in rs) else ''} |"
            )
    # -- conditions
    idle = [r["idle_before_pct"] for r in runs]
    other = [r["other_cpu_pct"] for r in runs]
    redone = sum(1 for r in runs if r["attempts"] > 1)
    noisy = [r for r in runs if r["noisy"]]
    L.append("\n#### Conditions\n")
    L.append(
        f"- Idle check before each run (whole machine, 1 s sample, threshold {a.idle_threshold:g}%, "
        f"waiting up to {a.idle_max_wait:g} s): median {med(idle):.1f}%, max {max(idle):.1f}%; "
        f"{sum(1 for x in idle if x >= a.idle_threshold)} of {len(runs)} runs started above the threshold "
        f"(after the maximum wait)."
    )
    L.append(
        f"- CPU used by processes outside the benchmark during the runs (% of the whole {NCPU}-CPU machine): "
        f"median {med(other):.2f}%, max {max(other):.2f}%. Runs above {a.other_max:g}% were redone "
        f"(up to {a.redo} times, keeping the quietest attempt): {redone} run(s) redone, "
        f"{len(noisy)} still above the limit"
        + (f" (time budget of {a.budget_min:g} min reached: later runs were not redone)" if bench.budget_note else "")
        + (": " + ", ".join(f"{r['scenario']}/{r['target']}/r{r['round']} {r['other_cpu_pct']:.1f}%" for r in noisy)
           if noisy else "")
        + "."
    )
    busy_names = sorted({r["busy_others"] for r in runs if r.get("busy_others")})
    if busy_names:
        L.append(f"- Busiest other processes when the machine was not idle: {'; '.join(busy_names[:5])}.")
    # (steal_pct is kept in --json only: this VM's steal counter jumps by more than the
    # elapsed time, so it is not a usable figure here.)
    gshare = [r["generator_cpu_share"] for r in runs if r["scenario"] == A]
    L.append(f"- Generator (wrk) CPU share on CPU 1 in layout A: median {med(gshare) * 100:.0f}% of a core.")
    L.append("- TLS negotiated (wrk/oha/loadtest use the same stack per tool): "
             + "; ".join(f"{t}: {v}" for t, v in bench.tls.items()) + ".")
    L.append("\n#### Versions\n")
    for k, v in bench.versions.items():
        L.append(f"- {k}: `{v}`")
    L.append("\n#### Command\n")
    L.append(f"```sh\n{cmdline}\n```")
    if perf:
        L.append("\n### Where infergate's time goes\n")
        L.append(perf)
    return "\n".join(L) + "\n"


def main():
    quick = os.environ.get("QUICK") == "1"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="directory with infergate, mock-model, infergate-loadtest")
    ap.add_argument("--envoy", default="", help="envoy binary (empty: no Envoy)")
    ap.add_argument("--oha", default="", help="oha binary (empty: infergate-loadtest --rate)")
    ap.add_argument("--work", required=True, help="scratch directory (configs, logs)")
    ap.add_argument("--out", help="write the markdown here too")
    ap.add_argument("--json", help="write every run's figures here")
    ap.add_argument("--rounds", type=int, default=1 if quick else 3)
    ap.add_argument("--duration", type=float, default=3 if quick else 10)
    ap.add_argument("--warmup", type=float, default=1 if quick else 2)
    ap.add_argument("--rates", default="5000" if quick else "2000,5000")
    ap.add_argument("--tls-rates", default="5000")
    ap.add_argument("--no-tls", dest="tls", action="store_false")
    ap.add_argument("--targets", default=",".join(PROXIES))
    ap.add_argument("--idle-threshold", type=float, default=10.0, help="%% busy (whole machine)")
    ap.add_argument("--idle-max-wait", type=float, default=10 if quick else 300)
    ap.add_argument("--other-max", type=float, default=2.0, help="%% of the machine used by others")
    ap.add_argument("--redo", type=int, default=0 if quick else 2)
    ap.add_argument("--budget-min", type=float, default=0,
                    help="after this many minutes, stop waiting for idle and redoing (0: no limit)")
    ap.add_argument("--perf", action="store_true", help="profile infergate with perf at the end")
    a = ap.parse_args()
    a.rates = [int(x) for x in a.rates.split(",") if x]
    a.tls_rates = [int(x) for x in a.tls_rates.split(",") if x]
    a.targets = [t for t in a.targets.split(",") if t]
    if "envoy" in a.targets and not a.envoy:
        a.targets.remove("envoy")
        log("no Envoy binary: Envoy left out")
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    b = Bench(a)
    b.start()
    log(f"targets: {', '.join(b.targets)}; TLS: {b.tls}")
    b.run()
    perf = b.perf() if a.perf else None
    cmdline = os.environ.get("COMPARE_CMDLINE") or " ".join(sys.argv)
    if a.rounds == 0:  # --rounds 0 --perf: the profile section only
        md = f"Run {started}.\n\n### Where infergate's time goes\n\n{perf or 'perf not available'}\n"
    else:
        md = render(b, perf, started, cmdline)
    print(md)
    if a.out:
        Path(a.out).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": b.runs, "versions": b.versions, "tls": b.tls}, indent=1))


if __name__ == "__main__":
    main()
