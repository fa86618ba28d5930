//! A fault-injecting TCP proxy between mastofs and sshd: pass, cut (RST), blackhole
//! (stop forwarding, keep the connection), stall one direction, add latency, and hold
//! server replies (so a request runs on the server but its reply never arrives).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward nothing, close nothing (a dead router). Data is delivered when it ends, as
    /// TCP retransmission would.
    Blackhole,
    /// Forward client -> server only: requests run, replies are held back.
    HoldReplies,
    /// Forward server -> client only.
    HoldRequests,
}

struct Shared {
    upstream: u16,
    mode: Mutex<Mode>,
    /// One-way delay added to every chunk.
    delay: Mutex<Duration>,
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    stop: AtomicBool,
    pub accepted: AtomicU64,
    pub bytes_up: AtomicU64,
    /// Bytes client -> server per connection, in the order they were accepted.
    per_conn_up: Mutex<Vec<Arc<AtomicU64>>>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

fn rst(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        Self::start_on(0, upstream)
    }

    pub fn start_on(port: u16, upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Pass),
            delay: Mutex::new(Duration::ZERO),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            per_conn_up: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            while !sh.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        sh.accepted.fetch_add(1, Ordering::Relaxed);
                        let sh2 = sh.clone();
                        std::thread::spawn(move || connect_pair(sh2, client));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, shared }
    }

    pub fn set_mode(&self, m: Mode) {
        if let Ok(mut g) = self.shared.mode.lock() {
            *g = m;
        }
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode.lock().map(|m| *m).unwrap_or(Mode::Pass)
    }

    /// Adds `d` of delay in each direction (a round trip gets 2*d).
    pub fn set_delay(&self, d: Duration) {
        if let Ok(mut g) = self.shared.delay.lock() {
            *g = d;
        }
    }

    /// Resets every open connection (RST to both sides) and goes back to Pass.
    pub fn cut(&self) {
        let conns: Vec<(TcpStream, TcpStream)> = self
            .shared
            .conns
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        for (c, s) in &conns {
            rst(c);
            rst(s);
        }
        self.set_mode(Mode::Pass);
    }

    pub fn connections(&self) -> usize {
        self.shared.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded client -> server so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::Relaxed)
    }

    /// Bytes forwarded client -> server by each connection that reached the server, in
    /// the order they connected.
    pub fn bytes_up_per_connection(&self) -> Vec<u64> {
        self.shared
            .per_conn_up
            .lock()
            .map(|v| v.iter().map(|b| b.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn connect_pair(sh: Arc<Shared>, client: TcpStream) {
    // During a blackhole, new connections hang too (SYN-ACK from us, then silence).
    while matches!(sh.mode.lock().map(|m| *m), Ok(Mode::Blackhole)) {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", sh.upstream)) else {
        rst(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    if let Ok(mut conns) = sh.conns.lock() {
        conns.push((c3, s3));
    }
    let counter = Arc::new(AtomicU64::new(0));
    if let Ok(mut v) = sh.per_conn_up.lock() {
        v.push(counter.clone());
    }
    let up = sh.clone();
    std::thread::spawn(move || pump(up, client, server, Some(counter)));
    std::thread::spawn(move || pump(sh, s2, c2, None));
}

/// Copies `from` -> `to`, obeying the mode and delay. `counted`: client -> server, with
/// this connection's byte counter. A reader stamps each chunk with its due time; a writer
/// delivers it then, so delay does not throttle throughput.
fn pump(sh: Arc<Shared>, mut from: TcpStream, mut to: TcpStream, counted: Option<Arc<AtomicU64>>) {
    let up = counted.is_some();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let wsh = sh.clone();
    let Ok(from_w) = from.try_clone() else { return };
    std::thread::spawn(move || {
        let sh = wsh;
        while let Ok((due, data)) = rx.recv() {
            loop {
                if sh.stop.load(Ordering::Relaxed) {
                    return;
                }
                let mode = sh.mode.lock().map(|m| *m).unwrap_or(Mode::Pass);
                let forward = match mode {
                    Mode::Pass => true,
                    Mode::Blackhole => false,
                    Mode::HoldReplies => up,
                    Mode::HoldRequests => !up,
                };
                if forward {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if data.is_empty() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            if to.write_all(&data).is_err() {
                rst(&from_w);
                return;
            }
            if let Some(c) = &counted {
                sh.bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
                c.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let delay = sh.delay.lock().map(|d| *d).unwrap_or_default();
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
            || n == 0
        {
            return;
        }
    }
}
