//! The daemon's own memory: one malloc arena, and freed memory handed back to the system
//! once the mount goes idle.
//!
//! Owns these two calls to glibc and nothing else. It reads a counter of activity (remote
//! requests answered, bytes moved) and must never touch the filesystem or the session.

use std::time::Duration;

/// How long nothing must happen before freed memory is handed back.
const IDLE: Duration = Duration::from_secs(2);

/// One malloc arena (unless `MALLOC_ARENA_MAX` says otherwise), set before the runtime's
/// threads start. glibc gives threads that allocate at once arenas of their own, up to
/// eight per core, and each keeps what was freed in it: the write-behind's 1 MiB buffers,
/// allocated by the kernel request threads and freed by the runtime's, made every arena
/// grow to the whole budget. Writing and reading 512 MiB on loopback peaked at 19.3 MiB
/// with two arenas and 15.0 with one, at the same CPU per GiB (0.74-0.82 s); a fixed
/// `M_MMAP_THRESHOLD` of 512 KiB (the buffers mapped and unmapped each time) peaked at
/// 17.4 for up to twice the CPU on writes. Small allocations do not contend for the one
/// arena: glibc serves them from a cache per thread.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets a malloc parameter; it takes malloc's own lock and has no
        // other effect.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Hands freed memory back to the system each time `activity` (a counter that grows with
/// every request) has stood still for [`IDLE`] after a change. glibc keeps what a burst
/// freed (the write-behind's megabytes, a long listing) for reuse; on a small host that
/// sits idle most of the time, the memory is worth more to others. One `malloc_trim` per
/// burst, a few milliseconds.
pub async fn trim_when_idle(activity: impl Fn() -> u64) {
    let mut last = activity();
    let mut trimmed = true;
    loop {
        tokio::time::sleep(IDLE).await;
        let now = activity();
        if now != last {
            (last, trimmed) = (now, false);
        } else if !trimmed {
            trimmed = true;
            trim();
        }
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of malloc's own heaps to the system,
    // under malloc's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
