#!/usr/bin/env python3
"""The local disk cache side by side: mastofs with cache=DIR, mastofs without, and sshfs,
on the same local sshd (through the delay proxy with --rtt-ms), in one run.

Usage: scripts/cache_bench.py [--rtt-ms 13] [--files 100] [--bin PATH]

Writes Mastodon-like media on the server (files of 20 KiB to 2 MiB, each in a leaf
directory of its own), reads them all through each mount (cold), remounts every mount
(the kernel's page cache and the daemons' caches are gone; the disk cache is not), and
reads them all again. Then creates small media (each in a new leaf directory, as
Mastodon's uploads do) through each mount: the cache column runs with cache_writeback=on,
so its creates complete locally; "create+sync" adds the wait until they are on the server
(`mastofs sync`). Prints each figure, the ratios against sshfs and against mastofs
without the cache, and the round trips per file (time / RTT) with --rtt-ms.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt-ms", type=float, default=0)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--server", default="openssh")
    ap.add_argument("--bin", default=os.path.join(bench.ROOT, "target/release/mastofs"))
    ap.add_argument("--proxy", default=os.path.join(bench.ROOT, "target/release/examples/faultproxy"))
    args = ap.parse_args()
    rig = bench.Rig(args)
    cache = tempfile.mkdtemp(prefix="mastofs-cache-bench-")
    tools = {"cache": "mastofs", "mastofs": "mastofs", "sshfs": "sshfs"}
    opts = {"cache": f"cache={cache}/c,cache_writeback=on", "mastofs": "", "sshfs": ""}
    rnd = random.Random(7)
    sizes = [rnd.choice([20, 60, 200, 700, 2048]) << 10 for _ in range(args.files)]
    rels = [f"media/{i // 10:03}/{i:03}/original/{i:x}.jpg" for i in range(args.files)]
    results = {}
    try:
        for name in tools:
            for rel, size in zip(rels, sizes):
                p = os.path.join(rig.served, name, rel)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(os.urandom(size))
            rig.mount(name, tools[name], opts[name])

        def read_all(name):
            t0 = bench.now()
            for rel in rels:
                bench.read_file(os.path.join(rig.mounts[name], rel))
            return bench.now() - t0

        for name in tools:
            results[(name, "cold")] = read_all(name)
        for name in tools:
            subprocess.run(["umount", rig.mounts[name]], check=True)
            rig.mount(name, tools[name], opts[name])
        bench.drop_caches()
        for name in tools:
            results[(name, "after remount")] = read_all(name)

        def create_all(name):
            t0 = bench.now()
            for i in range(args.files):
                p = os.path.join(rig.mounts[name], f"new/{i // 10:03}/{i:03}/original/{i:x}.jpg")
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(payload)
            return bench.now() - t0

        payload = os.urandom(60 << 10)
        for name in tools:
            results[(name, "create")] = create_all(name)
            t0 = bench.now()
            if name == "cache":
                subprocess.run([args.bin, "sync", rig.mounts[name]], check=True)
            results[(name, "create+sync")] = results[(name, "create")] + bench.now() - t0
    finally:
        rig.close()
        shutil.rmtree(cache, ignore_errors=True)
    total = sum(sizes) / (1 << 20)
    rtt = f", RTT {args.rtt_ms:g} ms" if args.rtt_ms else ", loopback"
    print(f"\n{args.files} media files, {total:.1f} MiB{rtt}; seconds for all")
    print(f"{'phase':<16}{'cache':>10}{'mastofs':>10}{'sshfs':>10}{'vs sshfs':>10}{'vs mastofs':>12}"
          + ("{:>16}".format("RTT/file c/m/s") if args.rtt_ms else ""))
    for phase in ["cold", "after remount", "create", "create+sync"]:
        c, m, s = (results[(t, phase)] for t in tools)
        line = f"{phase:<16}{c:>10.3f}{m:>10.3f}{s:>10.3f}{s / c:>9.1f}x{m / c:>11.1f}x"
        if args.rtt_ms:
            per = [x / args.files / (args.rtt_ms / 1000) for x in (c, m, s)]
            line += "{:>16}".format("/".join(f"{p:.1f}" for p in per))
        print(line)


if __name__ == "__main__":
    main()
