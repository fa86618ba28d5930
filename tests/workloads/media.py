#!/usr/bin/env python3
"""Mastodon media on a mount, as tests/workloads.rs drives it.

  media.py write ROOT N      writers and readers at once: N files in Mastodon's nested id
                             directories (media_attachments/files/000/001/234/original/...),
                             1 KB to 2 MB; readers check every file written so far. Prints
                             "progress K" as files complete (the test cuts the link on
                             those), "wrote N" at the end.
  media.py verify ROOT N [FIRST]   every file FIRST..N has exactly its bytes; none before
  media.py remove ROOT N     removes the older half as `tootctl media remove` does: unlink
                             each file, then each emptied parent up to files/.
Content is a function of the file's number, so any process can check any file.
"""
import hashlib
import os
import random
import sys
import threading


def path(root, i):
    d = f"{i:09d}"
    return os.path.join(root, "media_attachments", "files", d[0:3], d[3:6], d[6:9],
                        "original", f"{hashlib.sha1(str(i).encode()).hexdigest()[:16]}.png")


def size(i):
    r = random.Random(i)
    # Mostly thumbnails and small images, some large originals.
    return r.randint(1024, 64 * 1024) if r.random() < 0.9 else r.randint(512 * 1024, 2 << 20)


def content(i):
    seed = hashlib.sha256(str(i).encode()).digest()
    n = size(i)
    return (seed * (n // len(seed) + 1))[:n]


def write(root, n):
    lock = threading.Lock()
    done = []
    errors = []
    next_i = [0]

    def writer():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                return
            p = path(root, i)
            try:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(content(i))
            except OSError as e:
                errors.append(f"write {p}: {e}")
                return
            with lock:
                done.append(i)
                if len(done) % 100 == 0:
                    print(f"progress {len(done)}", flush=True)

    def reader(stop):
        r = random.Random(7)
        while not stop.is_set():
            with lock:
                i = done[r.randrange(len(done))] if done else None
            if i is None:
                stop.wait(0.01)
                continue
            try:
                with open(path(root, i), "rb") as f:
                    if f.read() != content(i):
                        errors.append(f"read {i}: wrong bytes")
                        return
            except OSError as e:
                errors.append(f"read {i}: {e}")
                return

    stop = threading.Event()
    writers = [threading.Thread(target=writer) for _ in range(8)]
    readers = [threading.Thread(target=reader, args=(stop,)) for _ in range(4)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    if errors:
        print("\n".join(errors[:20]), file=sys.stderr)
        sys.exit(1)
    print(f"wrote {len(done)}", flush=True)


def verify(root, n, first=0):
    bad = []
    for i in range(n):
        p = path(root, i)
        if i < first:
            if os.path.lexists(p):
                bad.append(f"{p}: should be gone")
            continue
        try:
            with open(p, "rb") as f:
                if f.read() != content(i):
                    bad.append(f"{p}: wrong bytes")
        except OSError as e:
            bad.append(f"{p}: {e}")
    if bad:
        print("\n".join(bad[:20]), file=sys.stderr)
        sys.exit(1)
    print(f"verified {n - first}")


def remove(root, n):
    top = os.path.join(root, "media_attachments", "files")
    for i in range(n // 2):
        p = path(root, i)
        os.unlink(p)
        d = os.path.dirname(p)
        while d != top:
            try:
                os.rmdir(d)
            except OSError:
                break  # not empty (ENOTEMPTY): others still live there
            d = os.path.dirname(d)
    print(f"removed {n // 2}")


if __name__ == "__main__":
    cmd, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "write":
        write(root, n)
    elif cmd == "verify":
        verify(root, n, int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    elif cmd == "remove":
        remove(root, n)
