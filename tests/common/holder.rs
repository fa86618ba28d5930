//! A process holding a file open, driven line by line: the restart tests' and the
//! real-systemd test's.

pub const BLOCK: usize = 65536;

/// A process holding a file open read-write, driven line by line: `w N` writes block N at
/// the descriptor's offset, `r N` reads a block there and compares it with block N, `sum`
/// reads a block and prints the sum of its bytes, `seek N` moves to block N, `fsync`,
/// `close`. Each answers `ok`, `bad`, `err ERRNO` (or `unknown command`).
pub const HOLDER: &str = r#"
import os, sys
BS = 65536
def block(n):
    b = bytes((n * 131 + i * 7) % 251 for i in range(256))
    return b * (BS // 256)
fd = os.open(sys.argv[1], os.O_RDWR)
print("ok", flush=True)
for line in sys.stdin:
    c = line.split() or [""]
    out = "unknown command %r" % line
    try:
        if c[0] == "w":
            out = "ok" if os.write(fd, block(int(c[1]))) == BS else "short"
        elif c[0] == "r":
            out = "ok" if os.read(fd, BS) == block(int(c[1])) else "bad"
        elif c[0] == "seek":
            os.lseek(fd, int(c[1]) * BS, 0); out = "ok"
        elif c[0] == "sum":
            out = "%d" % sum(os.read(fd, BS))
        elif c[0] == "fsync":
            os.fsync(fd); out = "ok"
        elif c[0] == "close":
            os.close(fd); out = "ok"
    except OSError as e:
        out = "err %d" % e.errno
    print(out, flush=True)
"#;

pub fn block(n: usize) -> Vec<u8> {
    let b: Vec<u8> = (0..256).map(|i| ((n * 131 + i * 7) % 251) as u8).collect();
    b.repeat(BLOCK / 256)
}
