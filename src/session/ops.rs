//! The remote operations of a [`Session`]: each one a request through replay, on the
//! connection for its path, after the pending writes it must see.
//!
//! Owns how every [`Remote`] method maps onto SFTP requests: splitting reads and writes
//! into pipelined requests, write-behind, reconciling replayed non-idempotent requests, and
//! closing handles. It must never reconnect or choose connections itself (that is
//! [`super::supervisor`] and [`Session::sup_for`]).

use super::ahead;
use super::handles::OpenFile;
use super::remote::{
    Attrs, Bytes, Capabilities, DirEntry, Kind, OpenMode, Remote, RemoteError, RemoteResult,
    RenameMode, StatVfs,
};
use super::replay::{exists_is_done, gone_is_done, renamed_is_done};
use super::supervisor::{Link, LinkState};
use super::Session;
use crate::name_bytes::{decode, encode as w};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

impl Remote for Session {
    type File = Arc<OpenFile>;

    fn is_connected(&self) -> bool {
        self.primary().is_up()
    }

    fn capabilities(&self) -> Capabilities {
        if let LinkState::Up(l) = self.primary().state() {
            self.learn_caps(&l);
        }
        self.caps.lock().map(|c| *c).unwrap_or_default()
    }

    async fn lstat(&self, path: &str) -> RemoteResult<Attrs> {
        self.settle_paths(|p| p == path).await;
        self.run(
            "lstat",
            (path, 0),
            |l, _| async move { l.lstat(&w(path)).await },
        )
        .await
    }

    async fn lstat_after(&self, path: &str, after: &str) -> RemoteResult<Attrs> {
        self.run("lstat", (after, 0), |l, _| async move {
            l.sftp.lstat(w(path)).await
        })
        .await
    }

    async fn lstat_ahead(&self, path: &str) -> RemoteResult<Attrs> {
        self.settle_paths(|p| p == path).await;
        let (link, attrs) = self
            .run("lstat", (path, 0), |l, _| async move {
                let wire = w(path);
                let mut lstat = std::pin::pin!(l.lstat(&wire));
                // The LSTAT is queued first: an OPEN of a FIFO stops an in-order server
                // until a writer comes, and the LSTAT would wait behind it.
                if let std::task::Poll::Ready(r) = futures::poll!(&mut lstat) {
                    return r.map(|a| (l.clone(), a));
                }
                self.ahead.offer(&l, path);
                let a = lstat.await?;
                Ok((l.clone(), a))
            })
            .await?;
        match attrs.kind() {
            Kind::Dir => drop(self.ahead.forget(path)),
            Kind::Other => {
                if let Some(answered) = self.ahead.forget(path) {
                    self.watch_stuck(link, path, answered);
                }
            }
            Kind::File | Kind::Symlink => {}
        }
        Ok(attrs)
    }

    async fn stat(&self, path: &str) -> RemoteResult<Attrs> {
        self.settle_paths(|p| p == path).await;
        self.run("stat", (path, 0), |l, _| async move {
            l.sftp.stat(w(path)).await
        })
        .await
    }

    async fn setstat(&self, path: &str, attrs: &Attrs) -> RemoteResult<()> {
        self.settle_paths(|p| p == path).await;
        self.run("setstat", (path, 0), |l, _| async move {
            l.sftp.setstat(w(path), attrs).await
        })
        .await
    }

    async fn read_dir(
        &self,
        path: &str,
        max: usize,
        dir_size: Option<u64>,
    ) -> RemoteResult<Option<Vec<DirEntry>>> {
        // A directory on ext4 takes about 2 KiB of size per 100 entries (one READDIR
        // batch of OpenSSH's): a big one gets its READDIRs out in the first round trip
        // instead of ramping up over three or four. (Elsewhere the size says less, and the
        // ramp does the rest.)
        let first = dir_size.map_or(2, |s| (s / 2048).clamp(2, 64) as usize);
        self.settle_paths(|p| p.rsplit_once('/').map_or("", |(d, _)| d) == path)
            .await;
        let listing = self
            .run("readdir", (path, 0), |l, _| async move {
                l.sftp.read_dir(w(path), max, first).await
            })
            .await?;
        Ok(listing.map(|entries| {
            entries
                .into_iter()
                .map(|e| DirEntry {
                    name: decode(&e.name),
                    attrs: e.attrs,
                })
                .collect()
        }))
    }

    async fn readlink(&self, path: &str) -> RemoteResult<String> {
        let (l, answer) = self
            .run("readlink", (path, 0), |l, _| async move {
                let t = l.sftp.readlink(w(path)).await?;
                Ok((l, decode(&t)))
            })
            .await?;
        Ok(self.link_text(&l, path, answer))
    }

    async fn realpath(&self, path: &str) -> RemoteResult<String> {
        self.run("realpath", (path, 0), |l, _| async move {
            l.sftp.realpath(w(path)).await
        })
        .await
        .map(|t| decode(&t))
    }

    async fn mkdir(&self, path: &str, perm: u32) -> RemoteResult<()> {
        self.run("mkdir", (path, 0), |l, replay| async move {
            let r = l.sftp.mkdir(w(path), &Attrs::with_perm(perm)).await;
            exists_is_done(&l, replay, path, Kind::Dir, r).await
        })
        .await
    }

    async fn rmdir(&self, path: &str) -> RemoteResult<()> {
        self.run("rmdir", (path, 0), |l, replay| async move {
            gone_is_done(replay, l.sftp.rmdir(w(path)).await)
        })
        .await
    }

    async fn remove(&self, path: &str) -> RemoteResult<()> {
        self.ahead.changed(path);
        self.run("remove", (path, 0), |l, replay| async move {
            gone_is_done(replay, l.sftp.remove(w(path)).await)
        })
        .await
    }

    async fn rename(
        &self,
        from: &str,
        to: &str,
        mode: RenameMode,
        links: bool,
    ) -> RemoteResult<()> {
        self.ahead.changed(from);
        self.ahead.changed(to);
        self.run("rename", (from, 0), |l, replay| async move {
            if links && l.traits.rename_follows_links {
                if let Some(r) = self.rename_around_links(&l, from, to, mode).await {
                    return renamed_is_done(&l, replay, from, to, r).await;
                }
            }
            let r = match mode {
                // Plain SFTP rename refuses an existing target on OpenSSH, which is
                // exactly RENAME_NOREPLACE; the caller checked the target beforehand for
                // servers that replace.
                RenameMode::NoReplace => l.sftp.rename(w(from), w(to)).await,
                RenameMode::Replace if l.sftp.extensions.posix_rename => {
                    l.sftp.posix_rename(w(from), w(to)).await
                }
                RenameMode::Replace => match l.sftp.rename(w(from), w(to)).await {
                    // No atomic replace on this server: remove the target, then rename.
                    Err(e) if !e.is_transport() && l.sftp.lstat(w(to)).await.is_ok() => {
                        l.sftp.remove(w(to)).await.map_err(|_| e)?;
                        l.sftp.rename(w(from), w(to)).await
                    }
                    other => other,
                },
            };
            renamed_is_done(&l, replay, from, to, r).await
        })
        .await?;
        self.handles.renamed(from, to);
        Ok(())
    }

    async fn symlink(&self, target: &str, link: &str) -> RemoteResult<()> {
        self.run("symlink", (link, 0), |l, replay| async move {
            let r = l.sftp.symlink(w(target), w(link)).await;
            exists_is_done(&l, replay, link, Kind::Symlink, r).await
        })
        .await?;
        self.remember_link(link, target);
        Ok(())
    }

    async fn hardlink(&self, from: &str, to: &str) -> RemoteResult<()> {
        self.run("link", (to, 0), |l, replay| async move {
            let r = l.sftp.hardlink(w(from), w(to)).await;
            exists_is_done(&l, replay, to, Kind::File, r).await
        })
        .await
    }

    async fn statvfs(&self, path: &str) -> RemoteResult<StatVfs> {
        self.run("statvfs", (path, 0), |l, _| async move {
            l.sftp.statvfs(w(path)).await
        })
        .await
    }

    async fn open(
        &self,
        path: &str,
        mode: OpenMode,
        perm: Option<u32>,
    ) -> RemoteResult<Self::File> {
        self.settle_paths(|p| p == path).await;
        if ahead::serves(mode) {
            if let Some((link, h)) = self.ahead.take(path).await {
                return Ok(self.handles.insert(path, mode, &link, h));
            }
        } else {
            self.ahead.changed(path);
        }
        let attrs = perm.map(Attrs::with_perm).unwrap_or_default();
        let (link, h) = self
            .run("open", (path, 0), |l, replay| {
                let attrs = &attrs;
                async move {
                    // A replayed exclusive create that finds the file: the first attempt
                    // made it. Open it without O_EXCL/O_TRUNC.
                    let m = if replay && mode.exclusive {
                        OpenMode {
                            exclusive: false,
                            truncate: false,
                            ..mode
                        }
                    } else {
                        mode
                    };
                    let open = || l.sftp.open(w(path), m, attrs);
                    let h = self.handles.open_with_room(&l, 0, open).await?;
                    Ok((l, h))
                }
            })
            .await?;
        Ok(self.handles.insert(path, mode, &link, h))
    }

    fn adopt(&self, path: &str, mode: OpenMode) -> Self::File {
        self.handles.adopt(path, mode)
    }

    async fn read(
        &self,
        f: &Self::File,
        offset: u64,
        len: u32,
        size: Option<u64>,
    ) -> RemoteResult<Bytes> {
        let data = self.read_once(f, offset, len, size).await?;
        // Some servers (ProFTPD) answer EOF at the size the file had when the handle was
        // opened, even after it grew. An end below the size known here is not believed:
        // the file is reopened (a fresh handle sees it as it is now) and read again.
        let end = offset + data.len() as u64;
        if (data.len() as u32) < len && size.is_some_and(|s| end < s) {
            f.close_idle().await;
            return self.read_once(f, offset, len, size).await;
        }
        Ok(data)
    }

    async fn write(&self, f: &Self::File, offset: u64, data: Bytes) -> RemoteResult<()> {
        let file = f.clone();
        let len = data.len();
        let me = self.me.upgrade();
        let (Some(me), true) = (me, len <= self.write_budget.ceiling()) else {
            file.wb.settle().await?;
            return self.write_now(&file, offset, &data).await;
        };
        let rtt = self.sups[0].stats.rtt_min_us.load(Ordering::Relaxed);
        self.write_budget
            .fit((rtt > 0).then(|| Duration::from_micros(rtt)));
        let permit = self
            .write_budget
            .hold(len)
            .await
            .ok_or_else(|| RemoteError::Broken("write budget closed".into()))?;
        file.wb.begin(offset, len).await?;
        tokio::spawn(async move {
            let r = me.write_now(&file, offset, &data).await;
            if let Err(e) = &r {
                tracing::warn!(path = %file.path(), offset, error = %e,
                    "acknowledged write failed; reported at the next flush, fsync or close");
            }
            file.wb.end(offset, len, r);
            drop(permit);
        });
        Ok(())
    }

    async fn confirmed(&self, f: &Self::File) -> bool {
        f.wb.drain().await;
        f.wb.is_confirmed()
    }

    async fn flush(&self, f: &Self::File) -> RemoteResult<()> {
        f.wb.settle().await
    }

    async fn fstat(&self, f: &Self::File) -> RemoteResult<Attrs> {
        self.with_handle("fstat", f, |l, h| async move { l.sftp.fstat(&h).await })
            .await
    }

    async fn fsetstat(&self, f: &Self::File, attrs: &Attrs) -> RemoteResult<()> {
        self.with_handle("fsetstat", f, |l, h| async move {
            l.sftp.fsetstat(&h, attrs).await
        })
        .await
    }

    async fn fsync(&self, f: &Self::File) -> RemoteResult<()> {
        self.flush(f).await?;
        if !self.capabilities().fsync {
            // Every write is confirmed now; there is no way to ask the server to flush its
            // own disk.
            return Ok(());
        }
        self.with_handle("fsync", f, |l, h| async move { l.sftp.fsync(&h).await })
            .await
    }

    async fn close(&self, f: &Self::File) -> RemoteResult<()> {
        // Every write is answered before the handle goes; a failed one is reported here.
        let written = self.flush(f).await;
        self.handles.remove(f);
        f.close_all().await;
        written
    }
}

impl Session {
    /// A spare OPEN went out for something that is not a regular file. An OPEN of a FIFO
    /// waits in the server for a writer, and an in-order server answers nothing behind it:
    /// if it is not answered within [`STUCK`], the connection is replaced (what was sent
    /// on it is replayed on the next one). The path is never opened ahead again.
    fn watch_stuck(&self, link: Arc<Link>, path: &str, answered: watch::Receiver<bool>) {
        const STUCK: std::time::Duration = std::time::Duration::from_secs(2);
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let path = path.to_string();
        tokio::spawn(async move {
            if !ahead::answered_within(answered, STUCK).await {
                tracing::warn!(%path, "an open ahead of a special file stopped the server; \
                    replacing the connection");
                me.retire(&link, "an open ahead of a special file stopped the server");
            }
        });
    }

    /// One read as the server answers it (see [`Remote::read`]).
    async fn read_once(
        &self,
        f: &Arc<OpenFile>,
        offset: u64,
        len: u32,
        size: Option<u64>,
    ) -> RemoteResult<Bytes> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        /// Requests of one read in flight at once (a server with tiny limits makes many).
        const PARTS_IN_FLIGHT: usize = 64;
        self.with_handle("read", f, |l, h| async move {
            let chunk = l.sftp.max_read;
            // Pipeline: the chunks of the request in flight together, in order.
            let parts = (0..len.div_ceil(chunk)).map(|i| {
                let off = offset + (i * chunk) as u64;
                let n = chunk.min(len - i * chunk);
                let l = &l;
                let h = &h;
                async move { l.sftp.read(h, off, n).await.map(|d| (n, d)) }
            });
            let parts: Vec<(u32, Bytes)> = stream::iter(parts)
                .buffered(PARTS_IN_FLIGHT)
                .try_collect()
                .await?;
            // The data ends at the first short part. That is the end of the file if a
            // later part came back empty or the known size ends there (no round trip
            // more); else the server returned less than asked: read on until EOF or full.
            let short = parts
                .iter()
                .position(|(asked, d)| (d.len() as u32) < *asked);
            let keep = short.map_or(parts.len(), |i| i + 1);
            let got: u64 = parts[..keep].iter().map(|(_, d)| d.len() as u64).sum();
            let eof_known = short.is_none_or(|i| {
                size == Some(offset + got) || parts[i + 1..].iter().any(|(_, d)| d.is_empty())
            });
            if keep == 1 && eof_known {
                // One part: the packet's bytes go to the kernel as they came.
                return Ok(parts.into_iter().next().map(|(_, d)| d).unwrap_or_default());
            }
            let mut out = bytes::BytesMut::with_capacity(len as usize);
            for (_, d) in parts.into_iter().take(keep) {
                out.extend_from_slice(&d);
            }
            while !eof_known && (out.len() as u32) < len {
                let more = l
                    .sftp
                    .read(&h, offset + out.len() as u64, len - out.len() as u32)
                    .await?;
                if more.is_empty() {
                    break;
                }
                out.extend_from_slice(&more);
            }
            Ok(out.freeze())
        })
        .await
    }
}
