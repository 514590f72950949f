#!/usr/bin/env python3
"""gRPC unary calls side by side: the mock model directly, through infergate, through Envoy.

Driven by benches/grpc_compare.sh. The same protocol as compare.py (../shared/BENCHMARKING.md):
everything on 127.0.0.1, one worker per proxy, access logs off, the same mock model (h2c, one
worker) behind both proxies, each proxy with one HTTP/2 connection pool to it; open-loop
`infergate-grpc-load` (OIP ModelInfer, 64 FP32 values, 4 client connections) at a fixed rate;
>= 3 rounds with the target order rotated; an idle check before each run, and the CPU other
processes used during it (runs where they used too much are redone). Two layouts, as the notes
ask for latency: C (proxy alone on CPU 0, generator and pod on CPU 1) and A (proxy and pod on
CPU 0, generator on CPU 1).

The added latency of a proxy is its percentile minus the direct run's of the same round and
layout; the table gives the median over rounds [min..max]. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as c  # noqa: E402  (its process, /proc and formatting helpers)

PORTS = {"mock": 18901, "infergate": (18910, 18919), "envoy": (18940, 18949)}


def write_configs(work: Path):
    ig, ig_admin = PORTS["infergate"]
    (work / "infergate.yaml").write_text(
        f"""allowInsecureConnections: true
listen: {{http: "127.0.0.1:{ig}", admin: "127.0.0.1:{ig_admin}"}}
defaults: {{maxConcurrentRequestsPerInstance: 1000, maxQueueWaitMs: 500, requestTimeoutMs: 5000}}
endpoints:
  - name: bench
    auth: {{mode: none}}
    deployments:
      - name: d
        protocol: h2c
        pods: ["127.0.0.1:{PORTS['mock']}"]
"""
    )
    ev, ev_admin = PORTS["envoy"]
    (work / "envoy.yaml").write_text(
        f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ev_admin}}}}}
static_resources:
  listeners:
  - name: grpc
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ev}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc
          codec_type: HTTP2
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/", grpc: {{}}}}
                route: {{cluster: mock, timeout: 5s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: mock
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: mock
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {PORTS['mock']}}}}}}}
"""
    )


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = Path(a.work)
        self.bin = Path(a.bin)
        self.procs = c.Procs(self.work)
        self.pids: dict[str, list[int]] = {}
        self.targets = ["direct", "infergate"] + (["envoy"] if a.envoy else [])
        self.runs: list[dict] = []

    def start(self):
        w = self.work
        write_configs(w)
        mock = self.procs.start(
            "mock",
            [str(self.bin / "mock-model"), "--listen", f"127.0.0.1:{PORTS['mock']}",
             "--name", "mock", "--protocol", "h2c"],
            env={"TOKIO_WORKER_THREADS": "1"},
        )
        c.wait_port(PORTS["mock"])
        self.pids["mock"] = [mock.pid]
        p = self.procs.start(
            "infergate",
            [str(self.bin / "infergate"), "serve", "--config", str(w / "infergate.yaml"),
             "--workers", "1"],
            env={"RUST_LOG": "warn"},
        )
        c.wait_port(PORTS["infergate"][0])
        self.pids["infergate"] = [p.pid]
        if self.a.envoy:
            p = self.procs.start(
                "envoy",
                [self.a.envoy, "-c", str(w / "envoy.yaml"), "--concurrency", "1", "-l", "warning",
                 "--disable-hot-restart"],
            )
            c.wait_port(PORTS["envoy"][0], timeout=30)
            self.pids["envoy"] = [p.pid]
        time.sleep(0.5)
        self.procs.check()

    def port(self, target: str) -> int:
        return PORTS["mock"] if target == "direct" else PORTS[target][0]

    def layout(self, name: str):
        for t, pids in self.pids.items():
            cpus = {1} if (t == "mock" and name == "C") else {0}
            c.set_affinity([q for p in pids for q in c.tree(p)], cpus)

    def argv(self, target: str, rate: int) -> list[str]:
        a = self.a
        argv = [str(self.bin / "infergate-grpc-load"), f"127.0.0.1:{self.port(target)}",
                "--rate", str(rate), "--warmup", f"{a.warmup:g}s", "--duration", f"{a.duration:g}s",
                "--connections", "4", "--json", str(self.work / "grpc.json")]
        if target == "infergate":
            argv += ["--endpoint", "bench"]
        return argv

    def one_run(self, layout: str, rate: int, target: str, rnd: int) -> dict:
        a = self.a
        mine = {q for pids in self.pids.values() for p in pids for q in c.tree(p)}
        tpids = [q for p in self.pids.get(target, []) for q in c.tree(p)] if target != "direct" else []
        t0 = c.tree_ticks(tpids)
        m_t0 = c.tree_ticks(list(mine))
        self_ru0 = c.resource.getrusage(c.resource.RUSAGE_SELF)
        m0 = c.machine_ticks()
        w0 = time.time()
        out, gen_cpu, rc = c.run_generator(self.argv(target, rate), 1, a.duration + a.warmup + 60)
        wall = time.time() - w0
        m1 = c.machine_ticks()
        self_ru1 = c.resource.getrusage(c.resource.RUSAGE_SELF)
        t1 = c.tree_ticks(tpids)
        m_t1 = c.tree_ticks(list(mine))
        if rc != 0:
            raise RuntimeError(f"generator failed ({rc}) for {target}:\n{out[-2000:]}")
        rep = json.loads((self.work / "grpc.json").read_text())
        lifetime_calls = rep["calls"] * (a.duration + a.warmup) / a.duration
        proxy_s = (t1 - t0) / c.HZ
        mine_s = (m_t1 - m_t0) / c.HZ
        self_s = (self_ru1.ru_utime + self_ru1.ru_stime) - (self_ru0.ru_utime + self_ru0.ru_stime)
        tot = (m1[0] - m0[0]) / c.HZ
        busy = ((m1[1] - m0[1]) + (m1[2] - m0[2])) / c.HZ
        irq = (m1[2] - m0[2]) / c.HZ
        other_s = max(0.0, busy - irq - mine_s - gen_cpu - self_s)
        rep.update(
            layout=layout, rate=rate, target=target, round=rnd, wall_s=wall,
            proxy_cpu_us_per_call=(1e6 * proxy_s / lifetime_calls) if tpids and lifetime_calls else None,
            other_cpu_pct=100 * other_s / tot if tot else 0,
        )
        return rep

    def run_with_redo(self, layout: str, rate: int, target: str, rnd: int) -> dict:
        a = self.a
        best = None
        for attempt in range(a.redo + 1):
            idle, _ = c.wait_idle(a.idle_threshold, a.idle_max_wait)
            res = self.one_run(layout, rate, target, rnd)
            res.update(idle_before_pct=idle, attempt=attempt + 1)
            noisy = res["other_cpu_pct"] > a.other_max
            c.log(
                f"  {layout} r{rnd} {rate}/s {target:<9} p50 {c.fmt_us(res['p50_us'])}"
                f" p99 {c.fmt_us(res['p99_us'])} calls/s {res['calls_per_s']:.0f}"
                f" err {res['errors']} late {res['late']}"
                f" proxy {c.fmt_num(res['proxy_cpu_us_per_call'], 1)} us/call"
                f" others {res['other_cpu_pct']:.1f}%{'  NOISY' if noisy else ''}"
            )
            if best is None or res["other_cpu_pct"] < best["other_cpu_pct"]:
                best = res
            if not noisy:
                break
        return best

    def run(self):
        a = self.a
        for layout in a.layouts:
            self.layout(layout)
            for rate in a.rates:
                for rnd in range(1, a.rounds + 1):
                    k = (rnd - 1) % len(self.targets)
                    order = self.targets[k:] + self.targets[:k]
                    for t in order:
                        self.runs.append(self.run_with_redo(layout, rate, t, rnd))

    def render(self, started: str, cmdline: str) -> str:
        a = self.a
        lines = [f"### gRPC unary (OIP ModelInfer) — run of {started}", "",
                 f"`{cmdline}`: {a.rounds} rounds, {a.warmup:g} s warm-up + {a.duration:g} s per run, "
                 "4 client HTTP/2 connections, 64 FP32 values per call; medians [min..max].", ""]
        lines += ["| layout | rate | target | p50 | p99 | added p50 | added p99 | proxy CPU us/call | errors |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for layout in a.layouts:
            for rate in a.rates:
                rs = [r for r in self.runs if r["layout"] == layout and r["rate"] == rate]
                direct = {r["round"]: r for r in rs if r["target"] == "direct"}
                for t in self.targets:
                    mine = [r for r in rs if r["target"] == t]
                    p50 = [r["p50_us"] for r in mine]
                    p99 = [r["p99_us"] for r in mine]
                    add50 = [r["p50_us"] - direct[r["round"]]["p50_us"] for r in mine if r["round"] in direct]
                    add99 = [r["p99_us"] - direct[r["round"]]["p99_us"] for r in mine if r["round"] in direct]
                    cpu = [r["proxy_cpu_us_per_call"] for r in mine]
                    errs = sum(r["errors"] for r in mine)
                    lines.append(
                        f"| {layout} | {rate}/s | {t} | {c.mmm(p50, 0, ' us')} | {c.mmm(p99, 0, ' us')} | "
                        + ("- | - | " if t == "direct" else f"{c.mmm(add50, 0, ' us')} | {c.mmm(add99, 0, ' us')} | ")
                        + f"{c.mmm(cpu, 1)} | {errs} |"
                    )
        lines.append("")
        for layout in a.layouts:
            for rate in a.rates:
                rs = [r for r in self.runs if r["layout"] == layout and r["rate"] == rate]
                direct = {r["round"]: r for r in rs if r["target"] == "direct"}

                def added(t, key):
                    return c.med([r[key] - direct[r["round"]][key] for r in rs
                                  if r["target"] == t and r["round"] in direct])

                if "envoy" in self.targets:
                    ig50, ig99 = added("infergate", "p50_us"), added("infergate", "p99_us")
                    ev50, ev99 = added("envoy", "p50_us"), added("envoy", "p99_us")
                    verdict = "beats" if ig50 < ev50 and ig99 < ev99 else "does not beat"
                    lines.append(
                        f"- Layout {layout}, {rate}/s: infergate adds {ig50:.0f} / {ig99:.0f} us (p50 / p99), "
                        f"Envoy {ev50:.0f} / {ev99:.0f} us: infergate **{verdict}** Envoy on both."
                    )
        return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--envoy", default="")
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[2000])
    ap.add_argument("--layouts", type=lambda s: s.split(","), default=["C", "A"])
    ap.add_argument("--idle-threshold", type=float, default=10.0)
    ap.add_argument("--idle-max-wait", type=float, default=60.0)
    ap.add_argument("--other-max", type=float, default=2.0)
    ap.add_argument("--redo", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    b = Bench(a)
    b.start()
    b.run()
    text = b.render(started, os.environ.get("COMPARE_CMDLINE", "bash benches/grpc_compare.sh"))
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": b.runs}, indent=1))
    b.procs.stop_all()


if __name__ == "__main__":
    main()
