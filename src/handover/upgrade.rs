//! `mastofs upgrade MOUNTPOINT`: the running daemon hands its live FUSE connection to a new
//! one (the new binary) over a unix socket, then exits without unmounting.
//!
//! Owns the socket (`<escaped mountpoint>.sock` in the handover run directory, never the
//! one shared with containers: see [`crate::rundir`]; mode 0600) and the exchange, one
//! JSON line each. The daemon answers only a peer of its own user or root in its own mount
//! and pid namespaces, and sends nothing before checking; the new side trusts only a
//! directory and a listener of its own user or root, a reply about the mountpoint it asked
//! for, and a FUSE device; every length is capped. Command lines and paths travel as
//! bytes (in `name_bytes`' lossless form).
//!
//! ```text
//! new -> old  {"upgrade":VERSION}
//! old -> new  {"args":[...],"mountpoint":P,"pid":N,"service":false,"drain_secs":S}
//! new -> old  {"ready":true}        the new daemon parsed the options and reached the server
//! old         closes the gate, waits for requests in service, confirms every write
//! old -> new  {"state":LEN} + the /dev/fuse descriptor, then LEN bytes of state
//! new -> old  {"taken":true}        then the old daemon exits; the new one serves
//! ```
//!
//! If the new daemon gives up before `taken`, the old one reopens the gate, has the kernel
//! resend what it parked, and goes on serving. A daemon run by a service manager with a
//! descriptor store answers `"service":true` instead: it confirms its writes, marks the
//! journal handed over and exits with [`EXIT_HANDED_OVER`], and the service manager starts
//! the new binary, which takes the stored connection. It must never exit before the
//! successor holds the connection (or the store does).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Inherited, Start};
use crate::fd_passing;
use crate::fs::state::journal::{Journal, State};
use crate::name_bytes;
use crate::rundir::{self, Dir};
use crate::status;

/// Exit status of a daemon that handed over to its service manager's store (the unit
/// restarts on it: `RestartForceExitStatus=`).
pub const EXIT_HANDED_OVER: i32 = 75;

/// How long either side waits for the other's next line (the state itself: the old
/// daemon's drain time on top).
const STEP: Duration = Duration::from_secs(120);

/// The longest line either side reads (a command line, a state header).
const MAX_LINE: u64 = 1 << 20;

/// The largest state accepted (about 100 bytes a node: millions of nodes).
const MAX_STATE: usize = 1 << 30;

/// The handover socket of the mount on `mountpoint`.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    rundir::path(Dir::Handover).join(format!("{}.sock", status::systemd_escape_path(mountpoint)))
}

/// Bytes as a string for a message (lossless, see `name_bytes`), and back.
fn text(b: &[u8]) -> String {
    name_bytes::decode(b)
}
fn bytes(s: &str) -> Vec<u8> {
    name_bytes::encode(s).into_owned()
}

#[derive(Serialize, Deserialize, Default)]
struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    upgrade: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mountpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taken: Option<bool>,
}

fn encode(m: &Message) -> Vec<u8> {
    let mut v = serde_json::to_vec(m).unwrap_or_default();
    v.push(b'\n');
    v
}

/// One line, at most [`MAX_LINE`] bytes.
fn read_message(r: &mut impl BufRead) -> Result<Message, String> {
    let mut line = Vec::new();
    match r.take(MAX_LINE).read_until(b'\n', &mut line) {
        Ok(0) => Err("the other daemon closed the connection".into()),
        Ok(_) if !line.ends_with(b"\n") => Err("message too long or cut short".into()),
        Ok(_) => serde_json::from_slice(&line).map_err(|e| format!("bad message: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// What the running daemon hands over.
pub struct Outgoing {
    /// The daemon's command line, for the successor to parse with its own parser.
    pub args: Vec<OsString>,
    /// The mountpoint as the daemon resolved it.
    pub mountpoint: PathBuf,
    pub fuse: Arc<OwnedFd>,
    /// Run by a service manager that keeps the connection (see the module doc).
    pub service: bool,
    /// How long the drain may take (`timeout=`): the successor waits that much longer.
    pub drain: Duration,
}

/// The running daemon's part of a handover, as the mount provides it.
pub trait Handing: Send + Sync + 'static {
    /// Stops serving: closes the gate, waits for requests in service, confirms writes.
    /// Returns the state to hand over (marked handed over).
    fn drain(&self) -> State;
    /// The successor gave up after [`Handing::drain`]: serve again.
    fn resume(&self);
}

/// Binds the handover socket (0600; a stale one from a dead daemon is replaced).
pub fn listen(mountpoint: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(mountpoint);
    if let Some(dir) = path.parent() {
        rundir::ensure(dir, Dir::Handover)?;
    }
    if UnixStream::connect(&path).is_ok() {
        return Err(format!("{} is in use by another daemon", path.display()));
    }
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(l)
}

/// Serves upgrade requests until one succeeds; then the process exits (never returns).
pub fn serve(listener: UnixListener, out: Outgoing, handing: Arc<dyn Handing>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        // Nothing is read or sent before the peer is known to be ours.
        match rundir::peer_is_trusted(&conn) {
            Ok(c) if rundir::same_namespaces(c.pid()) => {}
            Ok(c) => {
                tracing::warn!(
                    pid = c.pid(),
                    "handover request from another mount or pid namespace (a container?) refused"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("handover request refused: {e}");
                continue;
            }
        }
        match hand_over(conn, &out, &*handing) {
            Ok(code) => {
                tracing::info!("handed the mount over; exiting without unmounting");
                std::process::exit(code);
            }
            Err(e) => tracing::warn!(error = %e, "upgrade abandoned; serving on"),
        }
    }
}

/// One handover: Ok(exit status) once the successor (or the store) holds the connection.
fn hand_over(conn: UnixStream, out: &Outgoing, handing: &dyn Handing) -> Result<i32, String> {
    let _ = conn.set_read_timeout(Some(STEP));
    let mut r = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut w = &conn;
    let hello = read_message(&mut r)?;
    let version = hello.upgrade.ok_or("not an upgrade request")?;
    tracing::info!(successor = %version, "upgrade requested");
    let offer = Message {
        args: Some(out.args.iter().map(|a| text(a.as_bytes())).collect()),
        mountpoint: Some(text(out.mountpoint.as_os_str().as_bytes())),
        pid: Some(std::process::id()),
        service: Some(out.service),
        drain_secs: Some(out.drain.as_secs()),
        ..Default::default()
    };
    w.write_all(&encode(&offer)).map_err(|e| e.to_string())?;
    if read_message(&mut r)?.ready != Some(true) {
        return Err("the new daemon is not ready".into());
    }
    let state = handing.drain();
    if out.service {
        // The journal in the store says "handed over"; the service manager restarts us.
        let _ = w.write_all(&encode(&Message {
            taken: Some(true),
            ..Default::default()
        }));
        return Ok(EXIT_HANDED_OVER);
    }
    let bytes = state.encode();
    let head = encode(&Message {
        state: Some(bytes.len()),
        ..Default::default()
    });
    let sent = fd_passing::send(&conn, &head, &[out.fuse.as_fd()])
        .and_then(|()| w.write_all(&bytes))
        .map_err(|e| e.to_string())
        .and_then(|()| read_message(&mut r));
    match sent {
        Ok(m) if m.taken == Some(true) => Ok(0),
        Ok(_) => {
            handing.resume();
            Err("the new daemon did not take the connection".into())
        }
        Err(e) => {
            handing.resume();
            Err(e)
        }
    }
}

/// The new daemon's side, between asking and taking over.
pub struct Incoming {
    conn: UnixStream,
    reader: BufReader<UnixStream>,
    /// The running daemon's command line, and its mountpoint as it resolved it.
    pub args: Vec<OsString>,
    pub mountpoint: PathBuf,
    /// The running daemon hands over through its service manager's store.
    pub service: bool,
    pid: u32,
    /// How long to wait for the state once ready (the old daemon drains first).
    wait: Duration,
}

/// Asks the daemon of the mount on `mountpoint` (absolute) for a handover.
pub fn connect(mountpoint: &Path) -> Result<Incoming, String> {
    let path = socket_path(mountpoint);
    if let Some(dir) = path.parent() {
        rundir::verify(dir, Dir::Handover).map_err(|e| {
            format!(
                "no trusted mastofs daemon to upgrade on {}: {e}",
                mountpoint.display()
            )
        })?;
    }
    let conn = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no mastofs daemon to upgrade on {} ({}: {e})",
            mountpoint.display(),
            path.display()
        )
    })?;
    rundir::peer_is_trusted(&conn)
        .map_err(|e| format!("{}: {e}: refused, nothing sent", path.display()))?;
    let _ = conn.set_read_timeout(Some(STEP));
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let hello = Message {
        upgrade: Some(env!("CARGO_PKG_VERSION").into()),
        ..Default::default()
    };
    (&conn)
        .write_all(&encode(&hello))
        .map_err(|e| e.to_string())?;
    let offer = read_message(&mut reader)?;
    let theirs = offer.mountpoint.as_deref().map(bytes).unwrap_or_default();
    if theirs != mountpoint.as_os_str().as_bytes() {
        return Err(format!(
            "the daemon at {} serves {}, not {}: refused",
            path.display(),
            String::from_utf8_lossy(&theirs),
            mountpoint.display()
        ));
    }
    Ok(Incoming {
        args: offer
            .args
            .ok_or("the running daemon sent no command line")?
            .iter()
            .map(|a| OsString::from_vec(bytes(a)))
            .collect(),
        mountpoint: mountpoint.to_path_buf(),
        service: offer.service.unwrap_or(false),
        pid: offer.pid.unwrap_or(0),
        wait: STEP + Duration::from_secs(offer.drain_secs.unwrap_or(0)),
        conn,
        reader,
    })
}

/// Whether `fd` is the FUSE device (character device 10:229).
fn is_fuse_device(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| {
        st.st_mode & libc::S_IFMT == libc::S_IFCHR
            && nix::sys::stat::major(st.st_rdev) == 10
            && nix::sys::stat::minor(st.st_rdev) == 229
    })
}

impl Incoming {
    /// The new daemon is ready: takes the connection and the state, and waits until the
    /// old daemon is gone (only then may requests be resent and served).
    pub fn take(mut self) -> Result<Inherited, String> {
        self.send_ready()?;
        let _ = self.conn.set_read_timeout(Some(self.wait));
        let (bytes, fds) = fd_passing::receive(&self.conn).map_err(|e| e.to_string())?;
        let fuse = fds
            .into_iter()
            .next()
            .ok_or("no FUSE descriptor received")?;
        if !is_fuse_device(&fuse) {
            return Err("the descriptor received is not the FUSE device: refused".into());
        }
        let split = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("bad message")?;
        let head: Message = serde_json::from_slice(&bytes[..split]).map_err(|e| e.to_string())?;
        let len = head.state.ok_or("no state announced")?;
        if len > MAX_STATE {
            return Err(format!("a state of {len} bytes announced: refused"));
        }
        let mut state_bytes = bytes[split + 1..].to_vec();
        if state_bytes.len() < len {
            let mut rest = vec![0u8; len - state_bytes.len()];
            (&self.conn)
                .read_exact(&mut rest)
                .map_err(|e| format!("state cut short: {e}"))?;
            state_bytes.extend_from_slice(&rest);
        }
        let state = State::decode(&state_bytes)?;
        let journal = Arc::new(Journal::new(state.clone()));
        (&self.conn)
            .write_all(&encode(&Message {
                taken: Some(true),
                ..Default::default()
            }))
            .map_err(|e| e.to_string())?;
        self.wait_for_exit();
        Ok(Inherited {
            fuse,
            journal,
            state,
            how: Start::Upgrade,
        })
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How long the old daemon may take to drain, and the successor to be started.
    pub fn patience(&self) -> Duration {
        self.wait
    }

    /// For a daemon run by a service manager: asks it to hand over to its store and exit.
    pub fn trigger_service_restart(mut self) -> Result<(), String> {
        self.send_ready()?;
        let _ = self.conn.set_read_timeout(Some(self.wait));
        if read_message(&mut self.reader)?.taken != Some(true) {
            return Err("the daemon did not hand over".into());
        }
        self.wait_for_exit();
        Ok(())
    }

    fn send_ready(&mut self) -> Result<(), String> {
        let ready = Message {
            ready: Some(true),
            ..Default::default()
        };
        (&self.conn)
            .write_all(&encode(&ready))
            .map_err(|e| e.to_string())
    }

    /// Until the old daemon's process is gone (its end of the socket closes then).
    fn wait_for_exit(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(self.reader.read(&mut buf), Ok(n) if n > 0) {}
        // Gone, or a zombie its parent has not reaped yet.
        let alive = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
                .unwrap_or(false)
        };
        for _ in 0..500 {
            if self.pid == 0 || !alive(self.pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
