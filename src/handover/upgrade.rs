//! `mastofs upgrade MOUNTPOINT`: the running daemon hands its live FUSE connection to a new
//! one (the new binary) over a unix socket, then exits without unmounting.
//!
//! Owns the socket (`<mountpoint>.handover` beside the status socket, mode 0600, only the
//! daemon's own user or root may connect) and the exchange, one JSON line each:
//!
//! ```text
//! new -> old  {"upgrade":VERSION}
//! old -> new  {"args":[...],"mountpoint":P,"pid":N,"service":false}   its command line
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

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Inherited, Start};
use crate::fd_passing;
use crate::fs::journal::{Journal, State};
use crate::status;

/// Exit status of a daemon that handed over to its service manager's store (the unit
/// restarts on it: `RestartForceExitStatus=`).
pub const EXIT_HANDED_OVER: i32 = 75;

/// How long either side waits for the other's next line.
const STEP: Duration = Duration::from_secs(120);

/// The handover socket of the mount on `mountpoint`.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    status::run_dir().join(format!(
        "{}.handover",
        status::systemd_escape_path(mountpoint)
    ))
}

#[derive(Serialize, Deserialize, Default)]
struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    upgrade: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mountpoint: Option<PathBuf>,
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

fn read_message(r: &mut impl BufRead) -> Result<Message, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("the other daemon closed the connection".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad message: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// What the running daemon hands over.
pub struct Outgoing {
    /// The daemon's command line, for the successor to parse with its own parser.
    pub args: Vec<String>,
    /// The mountpoint as the daemon resolved it.
    pub mountpoint: PathBuf,
    pub fuse: Arc<OwnedFd>,
    /// Run by a service manager that keeps the connection (see the module doc).
    pub service: bool,
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
    let me = nix::unistd::geteuid().as_raw();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials);
        if !peer.is_ok_and(|c| c.uid() == me || c.uid() == 0) {
            tracing::warn!("handover request from another user refused");
            continue;
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
        args: Some(out.args.clone()),
        mountpoint: Some(out.mountpoint.clone()),
        pid: Some(std::process::id()),
        service: Some(out.service),
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
    pub args: Vec<String>,
    pub mountpoint: PathBuf,
    /// The running daemon hands over through its service manager's store.
    pub service: bool,
    pid: u32,
}

/// Asks the daemon of the mount on `mountpoint` for a handover.
pub fn connect(mountpoint: &Path) -> Result<Incoming, String> {
    let path = socket_path(mountpoint);
    let conn = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no mastofs daemon to upgrade on {} ({}: {e})",
            mountpoint.display(),
            path.display()
        )
    })?;
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
    Ok(Incoming {
        args: offer
            .args
            .ok_or("the running daemon sent no command line")?,
        mountpoint: offer.mountpoint.unwrap_or_else(|| mountpoint.to_path_buf()),
        service: offer.service.unwrap_or(false),
        pid: offer.pid.unwrap_or(0),
        conn,
        reader,
    })
}

impl Incoming {
    /// The new daemon is ready: takes the connection and the state, and waits until the
    /// old daemon is gone (only then may requests be resent and served).
    pub fn take(mut self) -> Result<Inherited, String> {
        self.send_ready()?;
        let (bytes, fds) = fd_passing::receive(&self.conn).map_err(|e| e.to_string())?;
        let fuse = fds
            .into_iter()
            .next()
            .ok_or("no FUSE descriptor received")?;
        let split = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("bad message")?;
        let head: Message = serde_json::from_slice(&bytes[..split]).map_err(|e| e.to_string())?;
        let len = head.state.ok_or("no state announced")?;
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

    /// For a daemon run by a service manager: asks it to hand over to its store and exit.
    pub fn trigger_service_restart(mut self) -> Result<(), String> {
        self.send_ready()?;
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
