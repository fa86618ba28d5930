#!/usr/bin/env python3
"""Where the daemon's memory goes: resident memory of mastofs (with the given options) and
of sshfs with its ssh, phase by phase, on the same local sshd in one run.

Usage: scripts/memory.py [--rtt-ms N] [--big-mib N] [--bin PATH] [--opts a=b,c=d ...] [--env N=V]

Each phase is run on every mount in turn; after it, the current resident memory (VmRSS)
and the peak so far (VmHWM) of the daemon plus its children are printed. Phases: idle
after mounting; one large file written (write-behind holds up to write_behind= of it);
read back cold; eight files read in parallel; 2,000 small files (20-200 KiB) created in
directories of their own, then read; twenty 16 MiB WAL segments written, fsynced and
renamed; a 10,000-entry directory listed with ls -l;
idle again after 5 s. Each --opts gives one more mastofs column (e.g. write_behind=8).
"""
import argparse
import os
import sys
import time
import concurrent.futures as cf
import subprocess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def rss(pids):
    """(current, peak) MiB of the processes `pids` together."""
    return sum(bench.rss_mib(p, "VmRSS") for p in pids), sum(bench.rss_mib(p, "VmHWM") for p in pids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt-ms", type=float, default=0)
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--server", default="openssh")
    ap.add_argument("--bin", default=os.path.join(bench.ROOT, "target/release/mastofs"))
    ap.add_argument("--proxy", default=os.path.join(bench.ROOT, "target/release/examples/faultproxy"))
    ap.add_argument("--opts", action="append", default=[], help="a further mastofs column with these options")
    ap.add_argument("--env", default="", help="environment for the mastofs daemons (NAME=VALUE ...)")
    args = ap.parse_args()
    big = args.big_mib << 20
    rig = bench.Rig(args)
    cols = [("mastofs", "mastofs", "")] + [(f"m{i}", "mastofs", o) for i, o in enumerate(args.opts)]
    cols += [("sshfs", "sshfs", "")]
    rows = []
    try:
        for name, kind, opts in cols:
            rig.mount(name, kind, opts)
        for name, _, _ in cols:
            d = os.path.join(rig.served, name, "list")
            os.makedirs(d)
            for i in range(10000):
                open(os.path.join(d, f"entry{i:05}"), "w").close()
            for i in range(8):
                bench.write_file(os.path.join(rig.served, name, f"par{i}.bin"), big // 8)
        time.sleep(1)

        def phase(label, fn):
            speeds = {}
            for name, _, _ in cols:
                s = bench.now()
                fn(rig.mounts[name])
                speeds[name] = bench.now() - s
            rows.append((label, {n: rss(rig.procs(n)) for n, _, _ in cols}, speeds))

        phase("idle after mount", lambda m: os.listdir(m))
        phase(f"write {args.big_mib} MiB", lambda m: bench.write_file(os.path.join(m, "w.bin"), big))

        def read_back(m):
            bench.drop_caches()
            bench.read_file(os.path.join(m, "w.bin"))
        phase(f"read {args.big_mib} MiB (cold)", read_back)

        def par(m):
            bench.drop_caches()
            with cf.ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda i: bench.read_file(os.path.join(m, f"par{i}.bin")), range(8)))
        phase("8 parallel readers", par)
        def small(m):
            r = bench.random.Random(2)
            for i in range(2000):
                d = os.path.join(m, "media", f"{i // 100:03}", f"{i % 100:03}")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "original.png"), "wb") as f:
                    f.write(os.urandom(r.randint(20_000, 200_000)))
        phase("2000 small files created", small)

        def small_read(m):
            bench.drop_caches()
            for i in range(2000):
                with open(os.path.join(m, "media", f"{i // 100:03}", f"{i % 100:03}", "original.png"), "rb") as f:
                    f.read()
        phase("2000 small files read", small_read)
        def wal(m):
            seg = os.urandom(16 << 20)
            os.makedirs(os.path.join(m, "archive"), exist_ok=True)
            for i in range(20):
                tmp = os.path.join(m, "archive", f"seg{i}.tmp")
                with open(tmp, "wb") as f:
                    f.write(seg)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, os.path.join(m, "archive", f"seg{i}"))
        phase("20 x 16 MiB write+fsync", wal)
        phase("ls -l 10000", lambda m: subprocess.run(["ls", "-l", os.path.join(m, "list")],
                                                       stdout=subprocess.DEVNULL, check=True))
        phase("idle 5 s later", lambda m: time.sleep(5 / len(cols)))
    finally:
        rig.close()

    heads = [f"{n}{(' ' + o) if o else ''}" for n, _, o in cols]
    link = f"{args.rtt_ms:g} ms RTT" if args.rtt_ms else "loopback"
    print(f"\nresident memory, MiB (now / peak so far), {link}; sshfs counts its ssh")
    print(f"{'phase':26}" + "".join(f"{h:>24}" for h in heads))
    for label, mem, speeds in rows:
        cells = "".join(f"{f'{mem[n][0]:.1f} / {mem[n][1]:.1f} ({speeds[n]:.1f}s)':>24}" for n, _, _ in cols)
        print(f"{label:26}{cells}")


if __name__ == "__main__":
    main()
