//! The tests' hostile SFTP server as a program, for sshd's `Subsystem` line:
//! `hostile_sftp MODE` serves the SFTP session on stdin/stdout, misbehaving as MODE says
//! (see tests/kit/src/hostile.rs).

use mastofs_testkit::hostile as server;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "plain".into());
    let Some(mode) = server::Mode::parse(&mode) else {
        eprintln!("hostile_sftp: unknown mode {mode}");
        std::process::exit(2);
    };
    let root = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    server::serve(io, root, mode).await;
}
