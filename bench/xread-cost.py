#!/usr/bin/env python3
"""What one XREAD costs Redis, by how many of the streams it names have
news: starts a private redis-server, fills STREAMS streams with ENTRIES
entries of 80 bytes each, then times (INFO commandstats) XREADs naming
every stream from ids that leave 0, 1, 4 or 16 entries to return.

    python3 bench/xread-cost.py [--streams 2000] [--entries 40] [--calls 100]
        [--redis-config NAME=VALUE ...]

Needs redis-server and redis-cli on PATH.
"""
import argparse
import re
import subprocess
import tempfile

from fanout import redis_settings, start_redis


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def cli(port, *args, data=None):
    return subprocess.run(["redis-cli", "-p", str(port), *args], input=data,
                          capture_output=True, check=True).stdout.decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=40)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--redis-config", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="xread-cost-")
    redis, port = start_redis(scratch, redis_settings(args.redis_config))
    try:
        keys = [f"y:room:r{i}:index" for i in range(args.streams)]
        fill = b"".join(resp("XADD", key, f"{e}-0", "m", "x" * 80)
                        for key in keys for e in range(1, args.entries + 1))
        cli(port, "--pipe", data=fill)
        used = re.search(r"used_memory_human:(\S+)", cli(port, "INFO", "memory")).group(1)
        print(f"{args.streams} streams of {args.entries} entries; Redis used_memory {used}")
        for news in (0, 1, 4, 16):
            start_id = f"{args.entries - news}-0"
            read = resp("XREAD", "COUNT", 1000, "STREAMS", *keys, *([start_id] * len(keys)))
            cli(port, "CONFIG", "RESETSTAT")
            cli(port, "--pipe", data=read * args.calls)
            stats = cli(port, "INFO", "commandstats")
            per_call = float(re.search(r"cmdstat_xread:.*?usec_per_call=([0-9.]+)", stats).group(1))
            print(f"figure XREAD naming {args.streams} streams, {news} new entries each: {per_call / 1000:.2f} ms per call")
    finally:
        redis.terminate()
        redis.wait(10)
        subprocess.run(["rm", "-rf", scratch])


if __name__ == "__main__":
    main()
