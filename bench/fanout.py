#!/usr/bin/env python3
"""Fan-out benchmark: starts a private Redis and N servers on it, runs the
`fanout` load generator (bench/loadgen) against them, and reports what the
servers and Redis spent during the measured window.

    python3 bench/fanout.py [--servers 2] [--impl rust|js] -- <fanout args>
    python3 bench/fanout.py -- --rooms 40 --readers 50 --writers 2 --rate 50 --duration 10

Prints the generator's figures, then per server CPU-seconds (utime + stime
from /proc/<pid>/stat) and RSS, Redis CPU-seconds (INFO cpu) and the
`INFO commandstats` calls made during the window, and the derived ratios:
server CPU-seconds per delivered MB and Redis CPU-microseconds per published
message (updates + probes).

--impl rust (default) runs `y-redis server` (Y_REDIS_BIN, default
target/release/y-redis; AUTH_DISABLED). --impl js runs another y-websocket
server through two commands you provide (e.g. a local @y/redis checkout):
YREDIS_JS_SERVER (started as `$YREDIS_JS_SERVER <port> <redis url> <prefix>`)
and YREDIS_JS_TOKEN (prints a token; sent as ?yauth=).
--redis-masters N (default 1) runs the servers on a Redis Cluster of N
masters instead (`redis-server --cluster-enabled yes` each, joined by
`redis-cli --cluster create`; REDIS_CLUSTER=true) and reports Redis CPU per
master; Redis figures are then sums over the masters. "stream entries
added/s" counts the XADDs Redis ran: the messages it accepted (plus one
task entry per new room).

Needs redis-server on PATH and a built generator
(cargo build --release -p y-redis-loadgen; FANOUT_BIN overrides).
"""
import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"fanout: nothing listens on {port} after {timeout} s")


def cpu_seconds(pid):
    """utime + stime of a process and its reaped children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11..14] = utime stime cutime cstime (after the state field)
    return sum(int(x) for x in fields[11:15]) / TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def redis_info(port, section):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", section],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def redis_cpu(port):
    info = redis_info(port, "cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def redis_io(port):
    """Socket reads and writes Redis made (`INFO stats`)."""
    info = redis_info(port, "stats")
    return int(info["total_reads_processed"]), int(info["total_writes_processed"])


def command_stats(ports):
    """`INFO commandstats` (calls, microseconds) per command, summed over the
    Redis processes on `ports`."""
    stats = {}
    for port in ports:
        for key, value in redis_info(port, "commandstats").items():
            name = key.removeprefix("cmdstat_")
            calls = int(re.search(r"calls=(\d+)", value).group(1))
            usec = int(re.search(r"usec=(\d+)", value).group(1))
            old = stats.get(name, (0, 0))
            stats[name] = (old[0] + calls, old[1] + usec)
    return stats


def redis_settings(settings):
    """`NAME=VALUE` settings as redis-server arguments."""
    args = []
    for setting in settings:
        name, _, value = setting.partition("=")
        args += [f"--{name}", value]
    return args


def start_redis(scratch, redis_config):
    """A private, non-persisting redis-server on a free port: (process, port)."""
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", scratch, *redis_config],
                             stdout=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    return redis, port


def start_cluster(masters, scratch, procs, redis_config):
    """N cluster-enabled redis-servers joined into one cluster; their ports."""
    ports = []
    for i in range(masters):
        port = free_port()
        node_dir = os.path.join(scratch, f"node{i}")
        os.makedirs(node_dir)
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", node_dir, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             # the bus port is port + 10000 by default, which may be taken or past 65535
             "--cluster-port", str(free_port()), *redis_config],
            stdout=subprocess.DEVNULL, start_new_session=True))
        wait_port(port)
        ports.append(port)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True)
    deadline = time.time() + 20
    for port in ports:
        while "cluster_state:ok" not in subprocess.run(["redis-cli", "-p", str(port), "CLUSTER", "INFO"],
                                                       capture_output=True, text=True).stdout:
            if time.time() > deadline:
                sys.exit(f"fanout: cluster node {port} not ok after 20 s")
            time.sleep(0.1)
    return ports


def descendants(pid):
    """The pid and its children (document engine helpers count as the server)."""
    pids = [pid]
    try:
        for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
            pids += descendants(int(child))
    except OSError:
        pass
    return pids


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--impl", choices=["rust", "js"], default="rust")
    parser.add_argument("--redis-masters", type=int, default=1,
                        help="more than 1: a Redis Cluster of that many masters")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the rust servers")
    parser.add_argument("--redis-config", action="append", default=[], metavar="NAME=VALUE",
                        help="a redis-server setting for the Redis (or every cluster master), "
                             "e.g. stream-node-max-entries=8")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    load_args = [a for a in args.rest if a != "--"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    fanout = os.environ.get("FANOUT_BIN", os.path.join(target, "release", "fanout"))
    server_bin = os.environ.get("Y_REDIS_BIN", os.path.join(target, "release", "y-redis"))
    scratch = tempfile.mkdtemp(prefix="fanout-")
    procs = []

    def stop_all():
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    redis_config = redis_settings(args.redis_config)

    try:
        cluster_env = {}
        if args.redis_masters > 1:
            if args.impl != "rust":
                sys.exit("fanout: --redis-masters needs --impl rust")
            redis_ports = start_cluster(args.redis_masters, scratch, procs, redis_config)
            redis_url = ",".join(f"redis://127.0.0.1:{p}" for p in redis_ports)
            cluster_env = {"REDIS_CLUSTER": "true"}
        else:
            redis, redis_port = start_redis(scratch, redis_config)
            procs.append(redis)
            redis_ports = [redis_port]
            redis_url = f"redis://127.0.0.1:{redis_port}"
        prefix = f"bench{os.getpid()}"
        servers, urls = [], []
        for i in range(args.servers):
            port = free_port()
            log = open(os.path.join(scratch, f"server{i}.log"), "w")
            if args.impl == "rust":
                env = dict(os.environ, PORT=str(port), REDIS=redis_url, REDIS_PREFIX=prefix,
                           AUTH_DISABLED="true", LOG=os.environ.get("BENCH_LOG", "warn"),
                           STORAGE_DIR=os.path.join(scratch, "data"),
                           # every generated client connects from 127.0.0.1
                           MAX_UPGRADES_PER_IP_PER_SECOND="1000000",
                           MAX_CONNECTIONS_PER_IP="1000000", **cluster_env)
                env.update(kv.split("=", 1) for kv in args.env)
                cmd = [server_bin, "server"]
            else:
                env = dict(os.environ)
                cmd = shlex.split(os.environ["YREDIS_JS_SERVER"]) + [str(port), redis_url, prefix]
            p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            servers.append(p)
            urls.append(f"ws://127.0.0.1:{port}")
            wait_port(port)
        if args.impl == "js" and os.environ.get("YREDIS_JS_TOKEN"):
            token = subprocess.run(shlex.split(os.environ["YREDIS_JS_TOKEN"]), capture_output=True,
                                   text=True, check=True).stdout.strip()
            load_args += ["--query", f"?yauth={token}"]
        cmd = [fanout] + [a for u in urls for a in ("--url", u)] + load_args
        print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
        gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
        before = after = None
        figures = {}

        def snapshot():
            return {
                "cpu": [sum(cpu_seconds(q) for q in descendants(p.pid)) for p in servers],
                "redis_cpu": [redis_cpu(p) for p in redis_ports],
                "redis_io": [redis_io(p) for p in redis_ports],
                "generator_cpu": cpu_seconds(gen.pid),
                "calls": command_stats(redis_ports),
                "at": time.time(),
            }

        for line in gen.stdout:
            if line.startswith("mark measure-start"):
                before = snapshot()
                continue
            if line.startswith("mark measure-end"):
                after = snapshot()
                after["rss"] = [sum(rss_mib(q) for q in descendants(p.pid)) for p in servers]
                continue
            print(line, end="", flush=True)
            m = re.match(r"figure (.+?): (.+)", line)
            if m:
                figures[m.group(1)] = m.group(2)
        gen.wait()
        if not (before and after):
            sys.exit("fanout: the generator ended before its measured window")
        window = after["at"] - before["at"]
        server_cpu = [a - b for a, b in zip(after["cpu"], before["cpu"])]
        redis_cpu_per = [a - b for a, b in zip(after["redis_cpu"], before["redis_cpu"])]
        redis_cpu_s = sum(redis_cpu_per)
        stats = {k: (c - before["calls"].get(k, (0, 0))[0], u - before["calls"].get(k, (0, 0))[1])
                 for k, (c, u) in after["calls"].items()}
        stats = {k: v for k, v in sorted(stats.items(), key=lambda kv: -kv[1][0]) if v[0] > 0}
        calls = {k: c for k, (c, _) in stats.items()}
        delivered_mb = float(figures.get("doc bytes delivered/s", "0")) * window / 1e6
        updates = float(figures.get("updates sent/s", "0")) * window
        probes = int(re.match(r"(\d+)", figures.get("probes", "0")).group(1))
        published = updates + probes
        print(f"figure measured window: {window:.1f} s")
        print("figure server CPU-seconds: " + " + ".join(f"{c:.2f}" for c in server_cpu) + f" = {sum(server_cpu):.2f}")
        print("figure server RSS MiB: " + ", ".join(f"{r:.1f}" for r in after["rss"]))
        print(f"figure Redis CPU-seconds: {redis_cpu_s:.2f}")
        if len(redis_ports) > 1:
            print("figure Redis CPU-seconds per master: " + " / ".join(f"{c:.2f}" for c in redis_cpu_per))
        # every stored message is one XADD (inside the add-message script; on a
        # cluster one script call adds a batch); new rooms add a task entry each
        reads = sum(a[0] - b[0] for a, b in zip(after["redis_io"], before["redis_io"]))
        writes = sum(a[1] - b[1] for a, b in zip(after["redis_io"], before["redis_io"]))
        print(f"figure Redis socket reads/s: {reads / window:.0f}, writes/s: {writes / window:.0f}")
        print(f"figure stream entries added/s (XADD): {calls.get('xadd', 0) / window:.0f}")
        print(f"figure generator CPU-seconds: {after['generator_cpu'] - before['generator_cpu']:.2f}")
        print("figure Redis calls: " + ", ".join(f"{k} {v}" for k, v in calls.items()))
        # time inside each command (commands run inside a script count in
        # both); the rest of Redis CPU is reading, parsing and replying
        print("figure Redis command CPU-s: " + ", ".join(f"{k} {u / 1e6:.2f}" for k, (_, u) in stats.items()))
        if delivered_mb > 0:
            print(f"figure server CPU-s per delivered MB: {sum(server_cpu) / delivered_mb:.4f} ({delivered_mb:.1f} MB of updates)")
        if published > 0:
            print(f"figure Redis CPU per published message: {redis_cpu_s / published * 1e6:.1f} us ({published:.0f} updates and probes)")
    finally:
        stop_all()
        if os.environ.get("BENCH_KEEP"):
            print(f"logs kept in {scratch}")
        else:
            subprocess.run(["rm", "-rf", scratch])


if __name__ == "__main__":
    main()
