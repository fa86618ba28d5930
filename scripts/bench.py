#!/usr/bin/env python3
"""Side-by-side benchmark: mastofs vs sshfs on the same local sshd, same run, interleaved.

Usage: scripts/bench.py [--quick] [--rtt-ms N] [--files N] [--big-mib N] [--deletes N] [--bin PATH] [--rss-trace]
                       [--server openssh|proftpd]

Starts a throw-away sshd (scripts/demo-server.sh), optionally behind the project's latency
proxy (examples/faultproxy.rs) adding N ms of round trip, mounts mastofs and sshfs
(reconnect,ServerAliveInterval=15), each also with max_conns=4, and sshfs once more with
mastofs's cipher (Ciphers=aes128-gcm@openssh.com: its ssh's default, chacha20-poly1305,
costs more CPU), runs each workload on each mount in turn, and prints one table with the
figures and the mastofs/sshfs ratios, plus OpenSSH's own ceilings on the same link (sftp
get, ssh cat with aes128-gcm). Client CPU counts the daemon with its ssh; "app system
time" is the benchmark's own kernel time for the same bytes (it depends on the request
sizes the daemon negotiated with the kernel). With --rtt-ms, a second table gives round
trips per operation (time / RTT) beside the floor each could reach.
--quick uses tiny sizes: it proves the script works (CI), not speed. At 13 ms, sshfs
creates about 9 small files and deletes about 24 a second:
--files 150 --big-mib 256 --deletes 2000 keeps such a run short.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def now():
    return time.monotonic()


class Rig:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="mastofs-bench-")
        self.srv = os.path.join(self.work, "server")
        script = "scripts/demo-proftpd.sh" if args.server == "proftpd" else "scripts/demo-server.sh"
        cfg = subprocess.check_output(["bash", os.path.join(ROOT, script), self.srv], text=True).strip()
        self.served = os.path.join(self.srv, "served")
        self.ssh_config = cfg
        self.proxy = None
        port = int(open(cfg).read().split("Port ")[1].split()[0])
        self.sshd_port = port
        if args.rtt_ms:
            self.proxy_port = free_port()
            self.proxy = subprocess.Popen([args.proxy, str(self.proxy_port), str(port), str(args.rtt_ms / 2)])
            wait_port(self.proxy_port)
            port = self.proxy_port
        # known_hosts lists the sshd's port; the proxy's port needs the same key.
        kh = os.path.join(self.srv, "known_hosts")
        key = open(kh).read().split(" ", 1)[1]
        with open(kh, "a") as f:
            f.write(f"[127.0.0.1]:{port} {key}")
        self.port = port
        text = open(cfg).read().replace(f"Port {self.sshd_port}", f"Port {port}")
        open(cfg, "w").write(text)
        self.mounts = {}
        self.pids = {}
        self.configs = {}

    def mount(self, name, kind, opts=""):
        mnt = os.path.join(self.work, "mnt-" + name)
        os.makedirs(mnt, exist_ok=True)
        sub = os.path.join(self.served, name)
        os.makedirs(sub, exist_ok=True)
        if kind.startswith("mastofs"):
            extra = (",max_conns=4" if kind == "mastofs4" else "") + (f",{opts}" if opts else "")
            env = getattr(self.args, "env", "")
            env = f"env {env} " if env else ""
            sh(f"{env}{self.args.bin} demo:{sub} {mnt} -F {self.ssh_config} -o ServerAliveInterval=15{extra}")
            pid = int(subprocess.check_output(["pgrep", "-f", f"{self.args.bin} demo:{sub} "]).split()[0])
        else:
            extra = {"sshfs4": ",max_conns=4", "sshfsgcm": ",Ciphers=aes128-gcm@openssh.com"}.get(kind, "")
            # sshfs daemonizes after starting its ssh, which init then adopts: a config
            # file of its own per mount is how its ssh processes are found (`procs`).
            cfg = os.path.join(self.work, f"ssh_config-{name}")
            shutil.copy(self.ssh_config, cfg)
            self.configs[name] = cfg
            sh(f"sshfs demo:{sub} {mnt} -F {cfg} -o reconnect,ServerAliveInterval=15{extra}")
            pid = int(subprocess.check_output(["pgrep", "-f", f"sshfs demo:{sub} "]).split()[0])
        self.mounts[name] = mnt
        self.pids[name] = pid
        return mnt

    def procs(self, name):
        """The client side of mount `name`: the daemon, its children, and (sshfs) the ssh
        processes it started, which are not its children."""
        pid = self.pids[name]
        out = [pid] + children(pid)
        cfg = self.configs.get(name)
        if cfg:
            for e in os.listdir("/proc"):
                if e.isdigit():
                    try:
                        argv = open(f"/proc/{e}/cmdline", "rb").read().split(b"\0")
                    except OSError:
                        continue
                    if argv and os.path.basename(argv[0]) == b"ssh" and f"-F{cfg}".encode() in argv:
                        out.append(int(e))
        return out

    def close(self):
        for mnt in self.mounts.values():
            subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
        try:
            pidfile = "proftpd.pid" if self.args.server == "proftpd" else "sshd.pid"
            os.kill(int(open(os.path.join(self.srv, pidfile)).read()), signal.SIGTERM)
        except OSError:
            pass
        if self.proxy:
            self.proxy.terminate()
        shutil.rmtree(self.work, ignore_errors=True)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    import socket
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"port {port} never opened")


def drop_caches():
    """Empties the page cache (root only; a no-op otherwise)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    except OSError:
        pass


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def cpu_seconds(pids):
    """CPU of the daemon and of the processes it runs (`Rig.procs`: sshfs's ssh does its
    encryption; mastofs encrypts in-process), so both figures cover the whole client side."""
    total = 0.0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, and the times of waited-for children (cutime, cstime).
        total += sum(int(x) for x in f[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid, key):
    """VmRSS (now) or VmHWM (peak) of `pid`, MiB; 0 if it is gone."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def app_system_seconds():
    """The benchmark's own kernel time so far (the FUSE requests it makes cost it)."""
    return os.times().system


def write_file(path, size, chunk=1 << 20):
    buf = os.urandom(chunk)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(buf[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def read_file(path, chunk=1 << 20):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(chunk)
            if not b:
                return n
            n += len(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--files", type=int, default=5000, help="small files created/read (default 5000)")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the large files (default 1024)")
    ap.add_argument("--deletes", type=int, default=10000, help="files deleted (default 10000)")
    ap.add_argument("--rtt-ms", type=float, default=0)
    ap.add_argument("--server", choices=["openssh", "proftpd"], default="openssh",
                    help="the SFTP server to measure against (default OpenSSH's internal-sftp)")
    ap.add_argument("--rss-trace", action="store_true",
                    help="print each mount's resident memory (now / peak) after every workload")
    ap.add_argument("--opts", default="", help="further options for the mastofs mounts")
    ap.add_argument("--env", default="", help="environment for the mastofs daemons (NAME=VALUE ...)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/mastofs"))
    ap.add_argument("--proxy", default=os.path.join(ROOT, "target/release/examples/faultproxy"))
    args = ap.parse_args()
    q = args.quick
    big = (16 << 20) if q else (args.big_mib << 20)
    nsmall = 100 if q else args.files
    nlist = 500 if q else 10000
    ndel = 500 if q else args.deletes
    nwal = 2 if q else 20
    nlat = 20 if q else 200

    rig = Rig(args)
    tools = ["mastofs", "mastofs4", "sshfs", "sshfs4", "sshfsgcm"]
    try:
        for t in tools:
            rig.mount(t, t, args.opts if t.startswith("mastofs") else "")
        results = {}  # workload -> tool -> (value, unit, higher_is_better)
        moved = {t: 0 for t in tools}
        cpu0 = {t: cpu_seconds(rig.procs(t)) for t in tools}

        def record(name, tool, value, unit, higher):
            results.setdefault(name, {})[tool] = (value, unit, higher)

        # Server-side files for cold reads, one set per tool.
        rnd = random.Random(1)
        for t in tools:
            write_file(os.path.join(rig.served, t, "big.bin"), big)
            for i in range(8):
                write_file(os.path.join(rig.served, t, f"par{i}.bin"), big // 8)
            d = os.path.join(rig.served, t, "list")
            os.makedirs(d)
            for i in range(nlist):
                open(os.path.join(d, f"entry{i:05}"), "w").close()
            for i in range(ndel):
                p = os.path.join(rig.served, t, "del", f"{i % 100:02}")
                os.makedirs(p, exist_ok=True)
                open(os.path.join(p, f"f{i}"), "w").close()
            for i in range(nlat):
                open(os.path.join(rig.served, t, f"lat{i}"), "wb").write(b"x" * 4096)

        for t in tools:  # interleaved per workload below; this loop only warms mounts
            os.listdir(rig.mounts[t])

        def each(fn):
            for t in tools:
                # Dirty pages of the previous workload are written back first, so that
                # disk I/O does not land in the next measurement.
                os.sync()
                fn(t, rig.mounts[t])
            if args.rss_trace:
                mem = {t: (sum(rss_mib(p, "VmRSS") for p in rig.procs(t)),
                           sum(rss_mib(p, "VmHWM") for p in rig.procs(t))) for t in tools}
                print(f"rss after {fn.__name__:20} " + "  ".join(f"{t} {n:.1f}/{h:.1f}" for t, (n, h) in mem.items()),
                      flush=True)

        def seq_write(t, m):
            c, a = cpu_seconds(rig.procs(t)), app_system_seconds()
            s = now()
            write_file(os.path.join(m, "w.bin"), big)
            record("seq write", t, big / (now() - s) / 1e6, "MB/s", True)
            record("client CPU per GB written", t, (cpu_seconds(rig.procs(t)) - c) / (big / 1e9), "s/GB", False)
            record("app system time per GB written", t, (app_system_seconds() - a) / (big / 1e9), "s/GB", False)
            moved[t] += big

        def seq_read(t, m):
            # Cold for the mount, warm on the server: the link is measured, not the disk.
            # The page cache is emptied first: reclaiming the gigabytes earlier workloads
            # left behind halved read speeds here.
            drop_caches()
            read_file(os.path.join(rig.served, t, "big.bin"))
            c, a = cpu_seconds(rig.procs(t)), app_system_seconds()
            s = now()
            n = read_file(os.path.join(m, "big.bin"))
            record("seq read (cold)", t, n / (now() - s) / 1e6, "MB/s", True)
            record("client CPU per GB read", t, (cpu_seconds(rig.procs(t)) - c) / (n / 1e9), "s/GB", False)
            record("app system time per GB read", t, (app_system_seconds() - a) / (n / 1e9), "s/GB", False)
            moved[t] += n

        def par_read(t, m):
            import concurrent.futures as cf
            drop_caches()
            for i in range(8):
                read_file(os.path.join(rig.served, t, f"par{i}.bin"))
            s = now()
            with cf.ThreadPoolExecutor(8) as ex:
                n = sum(ex.map(lambda i: read_file(os.path.join(m, f"par{i}.bin")), range(8)))
            record("8 parallel readers", t, n / (now() - s) / 1e6, "MB/s", True)
            moved[t] += n

        def small_create(t, m):
            r = random.Random(2)
            s = now()
            total = 0
            for i in range(nsmall):
                d = os.path.join(m, "media", f"{i // 1000:03}", f"{(i // 100) % 10:03}", f"{i % 100:03}")
                os.makedirs(d, exist_ok=True)
                size = r.randint(20_000, 200_000)
                with open(os.path.join(d, "original.png"), "wb") as f:
                    f.write(os.urandom(size))
                total += size
            record("small files create", t, nsmall / (now() - s), "files/s", True)
            moved[t] += total

        def small_read(t, m):
            # Cold: read through a fresh path name the kernel has not seen (server copy).
            src = os.path.join(rig.served, t, "media")
            dst = os.path.join(rig.served, t, "media_cold")
            shutil.copytree(src, dst)
            s = now()
            n = 0
            for dirpath, _, files in os.walk(os.path.join(m, "media_cold")):
                for f in files:
                    n += len(open(os.path.join(dirpath, f), "rb").read())
            record("small files read (cold)", t, nsmall / (now() - s), "files/s", True)
            moved[t] += n

        def small_read_by_path(t, m):
            # As a web server reads media: by the full path, no listing first; each file
            # in a leaf directory of its own. The leaf directories are siblings: after the
            # first, their names come from the parent's listing, and the file's own lookup
            # is the one round trip before the open. (Mastodon's own layout adds one
            # directory of its own, "original/".)
            src = os.path.join(rig.served, t, "media")
            dst = os.path.join(rig.served, t, "media_paths")
            shutil.copytree(src, dst)
            paths = [os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs]
            paths.sort()
            s = now()
            for p in paths:
                with open(os.path.join(m, "media_paths", p), "rb") as f:
                    f.read()
            record("small files read by path", t, len(paths) / (now() - s), "files/s", True)

        def ls_cold(t, m):
            s = now()
            subprocess.run(["ls", "-l", os.path.join(m, "list")], stdout=subprocess.DEVNULL, check=True)
            record(f"ls -l {nlist} (cold)", t, now() - s, "s", False)

        def ls_warm(t, m):
            s = now()
            subprocess.run(["ls", "-l", os.path.join(m, "list")], stdout=subprocess.DEVNULL, check=True)
            record(f"ls -l {nlist} (warm)", t, now() - s, "s", False)

        def stat_lat(t, m):
            ts = []
            for i in range(nlat):
                s = now()
                os.stat(os.path.join(m, f"lat{i}"))
                ts.append(now() - s)
            ts.sort()
            record("stat p50 (cold)", t, ts[len(ts) // 2] * 1000, "ms", False)

        def orc_lat(t, m):
            ts = []
            for i in range(nlat):
                p = os.path.join(rig.served, t, f"orc{i}")
                open(p, "wb").write(b"y" * 4096)
            for i in range(nlat):
                s = now()
                with open(os.path.join(m, f"orc{i}"), "rb") as f:
                    f.read(4096)
                ts.append(now() - s)
            ts.sort()
            record("open-read-close p50", t, ts[len(ts) // 2] * 1000, "ms", False)

        def delete(t, m):
            s = now()
            for i in range(ndel):
                os.unlink(os.path.join(m, "del", f"{i % 100:02}", f"f{i}"))
            record("delete", t, ndel / (now() - s), "files/s", True)

        def wal(t, m):
            seg = os.urandom(16 << 20)
            d = os.path.join(m, "archive")
            os.makedirs(d, exist_ok=True)
            s = now()
            for i in range(nwal):
                tmp = os.path.join(d, f"seg{i}.tmp")
                with open(tmp, "wb") as f:
                    f.write(seg)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, os.path.join(d, f"seg{i}"))
            record("16 MiB WAL write+fsync+rename", t, nwal / (now() - s), "files/s", True)
            moved[t] += nwal * len(seg)

        for fn in [seq_write, seq_read, par_read, small_create, small_read, small_read_by_path, ls_cold, ls_warm, stat_lat, orc_lat, delete, wal]:
            each(fn)

        for t in tools:
            gb = moved[t] / 1e9
            record("client CPU per GB moved", t, (cpu_seconds(rig.procs(t)) - cpu0[t]) / gb if gb else 0, "s/GB", False)
            record("peak RSS", t, sum(rss_mib(p, "VmHWM") for p in rig.procs(t)), "MiB", False)

        # OpenSSH's own ceilings on the same link.
        ceil = {}
        src = os.path.join(rig.served, "mastofs", "big.bin")
        drop_caches()
        read_file(src)
        s = now()
        sh(f"sftp -q -F {rig.ssh_config} demo:{src} /dev/null >/dev/null")
        ceil["sftp get"] = big / (now() - s) / 1e6
        if args.server == "openssh":  # ProFTPD's mod_sftp runs no commands
            s = now()
            sh(f"ssh -F {rig.ssh_config} -c aes128-gcm@openssh.com demo cat {src} > /dev/null")
            ceil["ssh cat (aes128-gcm)"] = big / (now() - s) / 1e6

        link = f"{args.rtt_ms:g} ms RTT proxy" if args.rtt_ms else "loopback"
        link += ", ProFTPD mod_sftp" if args.server == "proftpd" else ", OpenSSH internal-sftp"
        print(f"\nmastofs vs sshfs on {link}{' (QUICK: sizes too small to mean anything)' if q else ''}")
        print(f"{'workload':30} {'mastofs':>10} {'sshfs':>10} {'ratio':>7}   {'mastofs mc=4':>12} {'sshfs mc=4':>10} {'ratio':>7}"
              f"   {'sshfs gcm':>10} {'ratio':>7}  unit")

        def ratio(a, b, higher):
            return (a / b if higher else b / a) if a and b else float("nan")

        for name, row in results.items():
            m, unit, higher = row["mastofs"]
            m4, s_, s4, sg = row["mastofs4"][0], row["sshfs"][0], row["sshfs4"][0], row["sshfsgcm"][0]
            print(f"{name:30} {m:10.3f} {s_:10.3f} {ratio(m, s_, higher):6.2f}x   "
                  f"{m4:12.3f} {s4:10.3f} {ratio(m4, s4, higher):6.2f}x   "
                  f"{sg:10.3f} {ratio(m, sg, higher):6.2f}x  {unit}")
        print("(ratio > 1 means mastofs is better; mc=4: max_conns=4 on both; sshfs gcm: sshfs with "
              "Ciphers=aes128-gcm@openssh.com, against plain mastofs; client CPU and RSS include "
              "sshfs's ssh processes)")
        if args.rtt_ms:
            print_round_trips(results, args.rtt_ms, nlist)
        # What ls -l costs with no filesystem round trip at all: the floor of a warm listing.
        local = os.path.join(rig.served, "mastofs", "list")
        subprocess.run(["ls", "-l", local], stdout=subprocess.DEVNULL, check=True)
        s = now()
        subprocess.run(["ls", "-l", local], stdout=subprocess.DEVNULL, check=True)
        print(f"floor: ls -l {nlist} on the local disk   {now() - s:10.3f} s")
        for k, v in ceil.items():
            print(f"ceiling: {k:28} {v:10.1f} MB/s")
        r = results["seq read (cold)"]["mastofs"][0]
        if "ssh cat (aes128-gcm)" in ceil:
            print(f"mastofs seq read = {100 * r / ceil['ssh cat (aes128-gcm)']:.0f}% of ssh cat (aes128-gcm)")
    finally:
        rig.close()


def print_round_trips(results, rtt_ms, nlist):
    """Round trips per operation (its time / the RTT), beside the floor it could reach."""
    rtt = rtt_ms / 1000

    def per_op(value, unit):
        return {"files/s": 1 / value, "s": value, "ms": value / 1000}[unit] if value else float("nan")

    rows = [
        ("small files read (cold)", "a walk: leaf listing (open, readdir), open, read; upper levels shared"),
        ("small files read by path", "2: the file's lookup with its open, the read (3 with the open apart)"),
        (f"ls -l {nlist} (cold)", "about 3: open, pipelined READDIRs, close not waited for"),
        ("delete", "1"),
        ("small files create", "the mkdirs + 1"),
        (f"ls -l {nlist} (warm)", "0"),
        ("stat p50 (cold)", "1"),
        ("open-read-close p50", "2: open, read (close not waited for)"),
    ]
    print(f"\nround trips per operation at {rtt_ms:g} ms (time / RTT)")
    print(f"{'operation':30} {'mastofs':>8} {'sshfs':>8}  floor")
    for name, floor in rows:
        row = results.get(name)
        if not row:
            continue
        unit = row["mastofs"][1]
        m, s_ = per_op(row["mastofs"][0], unit) / rtt, per_op(row["sshfs"][0], unit) / rtt
        print(f"{name:30} {m:8.1f} {s_:8.1f}  {floor}")


if __name__ == "__main__":
    main()
