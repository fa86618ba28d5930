//! Listing a directory: OPENDIR, READDIRs pipelined, CLOSE not waited for, with bounds on
//! what a listing (and all of them at once) may hold, so a server that sends entries
//! without end cannot grow the daemon's memory. It must never hand on a name unchecked
//! as safe: names are the server's bytes, judged by the layers above.

use bytes::Bytes;

use super::{packet_on, SftpClient, R};
use crate::meta::Attrs;
use crate::sftp::error::SftpError;
use crate::sftp::wire::{self, kind, status, Reader};

/// A directory listing is refused beyond this many bytes of NAME replies: a server sending
/// entries without end cannot grow the daemon's memory past it.
pub const LISTING_BYTES: usize = 32 << 20;

/// All listings on their way at once hold at most this many bytes of replies; past it,
/// the listing that would grow them fails (only a hostile or broken server gets there).
pub const ALL_LISTINGS_BYTES: usize = 128 << 20;

/// Bytes of NAME replies held by listings on their way, process-wide.
static LISTINGS_HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One listing's share of [`LISTINGS_HELD`], given back when the listing ends.
#[derive(Default)]
struct ListingBytes(usize);

impl ListingBytes {
    /// Takes `n` more bytes; false when this listing or all of them together would pass
    /// their bound.
    fn take(&mut self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.0 += n;
        let all = LISTINGS_HELD.fetch_add(n, Ordering::Relaxed) + n;
        self.0 <= LISTING_BYTES && all <= ALL_LISTINGS_BYTES
    }
}

impl Drop for ListingBytes {
    fn drop(&mut self) {
        LISTINGS_HELD.fetch_sub(self.0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Empty READDIR batches tolerated in one listing before it is given up (a server that
/// answers without entries and without EOF would loop forever).
const EMPTY_BATCHES: usize = 8;

/// An entry of a remote directory listing; the name is the server's bytes, unchecked.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Bytes,
    pub attrs: Attrs,
}

impl SftpClient {
    /// One READDIR batch: the entries and the size of the reply holding them (the names
    /// are slices of it), or `None` at EOF.
    async fn readdir(&self, handle: &Bytes) -> R<Option<(Vec<DirEntry>, usize)>> {
        let r = self
            .call(|id| packet_on(kind::READDIR, id, handle).finish())
            .await?;
        let Some(body) = self.expect_or_eof(r, kind::NAME, "readdir")? else {
            return Ok(None);
        };
        let size = body.len();
        self.names(body).map(|n| Some((n, size)))
    }

    /// Decodes a NAME reply (the long names are skipped).
    pub(super) fn names(&self, body: Bytes) -> R<Vec<DirEntry>> {
        let mut r = Reader::new(body);
        let bad = |e: wire::DecodeError| self.conn.confused(format!("NAME: {e}"));
        let n = r.u32("count").map_err(bad)? as usize;
        // Each entry takes at least 12 bytes: a count beyond that is a lie.
        if n > r.remaining() / 12 {
            return Err(self.conn.confused(format!(
                "NAME claims {n} entries in {} bytes",
                r.remaining()
            )));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.owned("filename").map_err(bad)?;
            r.bytes("longname").map_err(bad)?;
            let attrs = r.attrs().map_err(bad)?;
            out.push(DirEntry { name, attrs });
        }
        Ok(out)
    }

    /// Lists a whole directory: OPENDIR, READDIRs pipelined (the server answers them in
    /// order, each with the next batch, then EOF; gesftpserver, which runs unrelated
    /// requests concurrently, serializes those on one handle), CLOSE (not waited for), as
    /// `tests/ops.rs` checks with 20,000 entries on all three servers. Two READDIRs
    /// go out first (most directories are small); every batch that comes back doubles how
    /// many are in flight, up to `READDIR_DEPTH`, so a big listing takes a few round trips
    /// instead of one per batch; `first` READDIRs go out at once instead of two where the
    /// caller expects a big directory. `None` when the directory holds more than `max` entries
    /// (listing stops there). A listing past [`LISTING_BYTES`] (or all together past
    /// [`ALL_LISTINGS_BYTES`]) or without end fails.
    pub async fn read_dir(
        &self,
        path: impl AsRef<[u8]>,
        max: usize,
        first: usize,
    ) -> R<Option<Vec<DirEntry>>> {
        use futures::stream::{FuturesOrdered, StreamExt};
        const READDIR_DEPTH: usize = 64;
        let r = self
            .call(|id| packet_on(kind::OPENDIR, id, path.as_ref()).finish())
            .await?;
        let handle = self.handle_of(r)?;
        let mut out = Vec::new();
        let mut bytes = ListingBytes::default();
        let mut empty = 0usize;
        let mut pending = FuturesOrdered::new();
        let mut depth = first.clamp(1, READDIR_DEPTH);
        for _ in 0..depth {
            pending.push_back(self.readdir(&handle.id));
        }
        let mut result = Ok(());
        while let Some(r) = pending.next().await {
            match r {
                Ok(Some((batch, size))) => {
                    if batch.is_empty() {
                        empty += 1;
                        if empty > EMPTY_BATCHES {
                            result = Err(SftpError::Status {
                                code: status::FAILURE,
                                message: "directory listing without end (empty batches)".into(),
                            });
                            break;
                        }
                    }
                    out.extend(batch);
                    if out.len() > max {
                        break;
                    }
                    if !bytes.take(size) {
                        tracing::warn!(entries = out.len(), "directory listing too large; refused");
                        result = Err(SftpError::Status {
                            code: status::FAILURE,
                            message: format!(
                                "directory listing larger than {} MiB (or all listings on \
                                 their way larger than {} MiB)",
                                LISTING_BYTES >> 20,
                                ALL_LISTINGS_BYTES >> 20
                            ),
                        });
                        break;
                    }
                    depth = (depth * 2).min(READDIR_DEPTH);
                    while pending.len() < depth {
                        pending.push_back(self.readdir(&handle.id));
                    }
                }
                // Answers come in order: everything after the first EOF is EOF too.
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(pending);
        self.close_nowait(&handle);
        result?;
        Ok((out.len() <= max).then_some(out))
    }
}
