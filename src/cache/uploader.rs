//! The uploader: one task per mount that drains the write-back queue to the server, in
//! order: a change goes once every earlier change to the same path, or to one inside or
//! above it, is on the server (see [`super::writeback::depends`]); unrelated ones go side
//! by side.
//!
//! Owns how each recorded change is made on the server so that doing it again (after a
//! crash between doing it and noting it done) ends in the same state: a directory that
//! exists is made, a file goes in under a temporary name and is renamed over the target,
//! a removal of what is gone is done, a rename whose source is gone and target present is
//! done. It owns the conflict rule too: a file the server shows in another version than
//! this mount last saw there was changed by another client; it is renamed aside to
//! `NAME.mastofs-conflict-<unix time>` before this mount's version goes in. Transient
//! failures (no connection) are retried without end; a refusal is counted, logged and
//! retried with backoff, so nothing recorded is ever dropped. It must never reorder changes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::oplog::{Op, Record};
use super::store::Version;
use super::writeback::Writeback;
use crate::meta::{Attrs, Kind, OpenMode};
use crate::session::remote::{Bytes, Remote, RemoteError, RemoteResult, RenameMode};

/// Bytes read from a data file and sent per WRITE.
const CHUNK: usize = 256 << 10;

/// Uploads at once, at most: changes that depend on no earlier pending one (other paths)
/// go side by side, so a backlog of files in their own directories costs the round trips
/// of one, not of all.
const PARALLEL: usize = 16;

/// Drains `wb` to `remote` for the life of the mount.
pub async fn run<R: Remote>(remote: Arc<R>, wb: Arc<Writeback>) {
    let logged = std::sync::Mutex::new(None::<Instant>);
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        let woken = wb.wake.notified();
        for rec in wb.ready(PARALLEL - running.len()) {
            let (remote, wb, logged) = (&*remote, &*wb, &logged);
            running.push(async move {
                retried(remote, wb, &rec, logged).await;
                rec.seq
            });
        }
        if running.is_empty() {
            woken.await;
            continue;
        }
        tokio::select! {
            Some(seq) = futures::StreamExt::next(&mut running) => wb.finish(seq),
            () = woken => {}
        }
    }
}

/// Uploads `rec` until the server has it: transient failures (no connection) and
/// refusals are retried with backoff, refusals counted and logged (once a minute).
async fn retried<R: Remote>(
    remote: &R,
    wb: &Writeback,
    rec: &Record,
    logged: &std::sync::Mutex<Option<Instant>>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let e = match upload(remote, wb, rec).await {
            Ok(()) => return wb.accepted(rec.seq),
            Err(e) => e,
        };
        let transient = matches!(e, RemoteError::Timeout(_) | RemoteError::Broken(_));
        if !transient {
            wb.stats.upload_errors.fetch_add(1, Relaxed);
            wb.refused(rec, &e);
        }
        if let Ok(mut l) = logged.lock() {
            if l.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                *l = Some(Instant::now());
                tracing::warn!(error = %e, op = ?rec.op, "write-back: upload failed; retrying (nothing is dropped)");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(if transient { 5 } else { 60 }));
    }
}

fn errno_is(r: &RemoteResult<impl Sized>, errno: i32) -> bool {
    matches!(r, Err(e) if e.errno() == errno)
}

fn parent_of(path: &str) -> Option<&str> {
    let i = path.rfind('/')?;
    (i > 0).then(|| &path[..i])
}

fn version_of(a: &Attrs) -> Option<Version> {
    match (a.kind(), a.size, a.mtime) {
        (Kind::File, Some(size), Some(mtime)) => Some((size, mtime)),
        _ => None,
    }
}

/// Makes `dir` and its missing parents (a directory the log made can be gone from the
/// server if another client removed it meanwhile: what is uploaded into it is not lost).
async fn make_parents<R: Remote>(remote: &R, dir: &str) -> RemoteResult<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        match remote.lstat(d).await {
            Ok(_) => break,
            Err(e) if e.errno() == libc::ENOENT => missing.push(d.to_string()),
            Err(e) => return Err(e),
        }
        at = parent_of(d);
    }
    for d in missing.iter().rev() {
        let r = remote.mkdir(d, 0o755).await;
        if r.is_err() && !errno_is(&r, libc::EEXIST) {
            return r;
        }
    }
    Ok(())
}

async fn upload<R: Remote>(remote: &R, wb: &Writeback, rec: &Record) -> RemoteResult<()> {
    match &rec.op {
        Op::Mkdir { path, perm, .. } => {
            // Its mode asked in the same round trip where the server answers in order.
            let (mut r, mut seen) = if remote.capabilities().in_order {
                let (r, a) = tokio::join!(remote.mkdir(path, *perm), remote.lstat(path));
                (r, a.ok())
            } else {
                (remote.mkdir(path, *perm).await, None)
            };
            if errno_is(&r, libc::ENOENT) {
                if let Some(p) = parent_of(path) {
                    make_parents(remote, p).await?;
                    r = remote.mkdir(path, *perm).await;
                    seen = None;
                }
            }
            if r.is_err() {
                // Made before a crash, or by someone else: a directory there will do.
                match remote.lstat(path).await {
                    Ok(a) if a.kind() == Kind::Dir => return Ok(()),
                    _ => return r,
                }
            }
            // The server applied its umask (unless it kept the mode asked for).
            if seen.is_some_and(|a| a.mode.map(|m| m & 0o7777) == Some(*perm)) {
                return Ok(());
            }
            remote.setstat(path, &Attrs::with_perm(*perm)).await
        }
        Op::Put { .. } => put(remote, wb, rec).await,
        Op::Remove { path } => {
            let r = remote.remove(path).await;
            if errno_is(&r, libc::ENOENT) {
                return Ok(());
            }
            r
        }
        Op::Rmdir { path } => {
            let r = remote.rmdir(path).await;
            if errno_is(&r, libc::ENOENT) {
                return Ok(());
            }
            if errno_is(&r, libc::ENOTEMPTY) || errno_is(&r, libc::EEXIST) {
                // Another client put something in it: it stays, with what is in it.
                wb.stats.conflicts.fetch_add(1, Relaxed);
                tracing::warn!(
                    path,
                    "write-back: directory not removed, another client put files in it"
                );
                return Ok(());
            }
            r
        }
        Op::Rename { from, to, .. } => {
            let r = remote.rename(from, to, RenameMode::Replace, false).await;
            if r.is_ok() {
                return Ok(());
            }
            let (src, dst) = tokio::join!(remote.lstat(from), remote.lstat(to));
            match (src, dst) {
                // Renamed before a crash.
                (Err(e), Ok(_)) if e.errno() == libc::ENOENT => Ok(()),
                (Err(e), Err(_)) if e.errno() == libc::ENOENT => {
                    tracing::warn!(
                        from,
                        to,
                        "write-back: nothing to rename on the server (removed by another client?)"
                    );
                    wb.stats.conflicts.fetch_add(1, Relaxed);
                    Ok(())
                }
                _ => r,
            }
        }
        Op::SetStat {
            path, perm, mtime, ..
        } => {
            let attrs = Attrs {
                mode: *perm,
                atime: *mtime,
                mtime: *mtime,
                ..Default::default()
            };
            let r = remote.setstat(path, &attrs).await;
            if errno_is(&r, libc::ENOENT) {
                return Ok(());
            }
            r
        }
    }
}

/// A file's contents: in under a temporary name, with its mode and mtime, then renamed
/// over the target (the server never shows a partly uploaded file under its name).
async fn put<R: Remote>(remote: &R, wb: &Writeback, rec: &Record) -> RemoteResult<()> {
    let Op::Put {
        path,
        data,
        size,
        perm,
        mtime,
        base,
        ..
    } = &rec.op
    else {
        return Ok(());
    };
    let ours = (*size, *mtime);
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path.as_str()),
    };
    let tmp = format!("{dir}/.{name}.mastofs-{}", rec.seq);
    let mode = OpenMode {
        write: true,
        create: true,
        truncate: true,
        ..Default::default()
    };
    // What the target is now, and the temporary file, in one round trip.
    let (seen, opened) = tokio::join!(remote.lstat(path), remote.open(&tmp, mode, Some(*perm)));
    let f = match opened {
        Err(e) if e.errno() == libc::ENOENT && !dir.is_empty() => {
            make_parents(remote, dir).await?;
            remote.open(&tmp, mode, Some(*perm)).await?
        }
        r => r?,
    };
    let wanted = async {
        match seen {
            Ok(a) => {
                // This very version is no conflict (uploaded before a crash, or the same
                // size written within the same second of the last one): it goes up
                // again, unless its data is gone (kept as a read copy once uploaded: a
                // crash lost the note that it was).
                let theirs = version_of(&a);
                if theirs == Some(ours) && !wb.data_path(*data).exists() {
                    return Ok(false);
                }
                if a.kind() != Kind::File || (theirs != *base && theirs != Some(ours)) {
                    set_aside(remote, wb, path).await?;
                }
            }
            Err(e) if e.errno() == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
        send(remote, wb, &f, *data, *size).await?;
        Ok(true)
    }
    .await;
    let attrs = Attrs {
        mode: Some(*perm),
        atime: Some(*mtime),
        mtime: Some(*mtime),
        ..Default::default()
    };
    // Its mode and mtime through the handle, in the close's round trip where the server
    // answers in order (the writes are confirmed: nothing changes the mtime after).
    let closed = match wanted {
        Ok(true) if remote.capabilities().in_order => {
            let (set, closed) = tokio::join!(remote.fsetstat(&f, &attrs), remote.close(&f));
            set.and(closed)
        }
        Ok(true) => {
            let set = remote.fsetstat(&f, &attrs).await;
            set.and(remote.close(&f).await)
        }
        _ => remote.close(&f).await,
    };
    match (wanted, closed) {
        (Ok(true), Ok(())) => remote.rename(&tmp, path, RenameMode::Replace, false).await,
        (Ok(false), _) => {
            let _ = remote.remove(&tmp).await;
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) => {
            let _ = remote.remove(&tmp).await;
            Err(e)
        }
    }
}

/// Writes data file `data` through `f`.
async fn send<R: Remote>(
    remote: &R,
    wb: &Writeback,
    f: &R::File,
    data: u64,
    size: u64,
) -> RemoteResult<()> {
    let file = std::fs::File::open(wb.data_path(data)).map_err(|e| {
        RemoteError::refused(libc::EIO, format!("write-back data file {data:x}: {e}"))
    })?;
    let file = Arc::new(file);
    let mut at = 0;
    while at < size {
        let len = CHUNK.min((size - at) as usize);
        let fh = file.clone();
        let chunk = tokio::task::spawn_blocking(move || Writeback::read_at(&fh, at, len))
            .await
            .map_err(|e| RemoteError::Broken(e.to_string()))?
            .map_err(|e| RemoteError::refused(libc::EIO, format!("write-back data: {e}")))?;
        if chunk.len() < len {
            return Err(RemoteError::refused(
                libc::EIO,
                format!("write-back data file {data:x} is shorter than recorded"),
            ));
        }
        remote.write(f, at, Bytes::from(chunk)).await?;
        at += len as u64;
    }
    remote.flush(f).await
}

/// Renames the server's copy of `path` aside: `NAME.mastofs-conflict-<unix time>`
/// (`-2`, `-3`... when that is taken).
async fn set_aside<R: Remote>(remote: &R, wb: &Writeback, path: &str) -> RemoteResult<()> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for n in 1..100 {
        let aside = if n == 1 {
            format!("{path}.mastofs-conflict-{t}")
        } else {
            format!("{path}.mastofs-conflict-{t}-{n}")
        };
        let r = remote
            .rename(path, &aside, RenameMode::NoReplace, false)
            .await;
        match r {
            Ok(()) => {
                wb.stats.conflicts.fetch_add(1, Relaxed);
                tracing::warn!(
                    path,
                    aside,
                    "write-back: the server's copy changed behind a pending write; kept aside"
                );
                return Ok(());
            }
            Err(e) if e.errno() == libc::EEXIST => continue,
            Err(e) => return Err(e),
        }
    }
    Err(RemoteError::refused(
        libc::EEXIST,
        "no free name to set a conflicting copy aside",
    ))
}
