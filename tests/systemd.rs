//! `nixcache serve` under a service manager: the real binary, a real unix datagram socket standing in
//! for systemd's `$NOTIFY_SOCKET`. READY=1 comes once the port answers, WATCHDOG=1 keeps coming at half
//! of `$WATCHDOG_USEC`, STOPPING=1 comes at SIGTERM — what `Type=notify` and `WatchdogSec=` in the
//! NixOS module rely on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ChildGuard;

/// The next notification, or None after `timeout`.
fn next(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    socket
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_notifies_ready_after_listening_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .env_clear()
        .env("NOTIFY_SOCKET", &socket_path)
        // 200 ms: WATCHDOG=1 every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        // No upstream: nothing leaves the machine.
        .env("NIXCACHE_UPSTREAM", "")
        .env("NIXCACHE_LOG", "warn")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nixcache serve");
    let mut child = ChildGuard(child);

    let ready = next(&socket, Duration::from_secs(30)).expect("READY=1 within 30 s");
    let mut lines = ready.lines();
    assert_eq!(lines.next(), Some("READY=1"), "{ready:?}");
    let addr = lines
        .find_map(|l| l.strip_prefix("STATUS=serving on "))
        .unwrap_or_else(|| panic!("no STATUS with the address in {ready:?}"))
        .to_string();
    // Ready means ready: the port answers the moment READY=1 has arrived.
    let answer = get(&addr, "/nix-cache-info");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let started = Instant::now();
    let mut fed = 0;
    while fed < 5 {
        let message = next(&socket, Duration::from_secs(5)).expect("WATCHDOG=1 keeps coming");
        assert_eq!(message, "WATCHDOG=1");
        fed += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "5 WATCHDOG=1 at 100 ms took {:?}",
        started.elapsed()
    );

    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let stopping = loop {
        match next(&socket, Duration::from_secs(10)) {
            Some(m) if m == "WATCHDOG=1" => continue,
            other => break other,
        }
    };
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    let status = child.0.wait().unwrap();
    assert!(status.success(), "nixcache exited with {status}");
}
