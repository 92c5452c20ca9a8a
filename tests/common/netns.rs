//! Two hosts on one machine for mDNS tests: network namespaces joined by a veth pair, processes started
//! in them (ended by PID), and avahi as an independent mDNS stack (recipes/PEERS.md). Everything created
//! here is removed by a drop guard, also when a test fails. Needs root.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::require;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Fails loudly unless the tests run as root with the tools they need.
pub fn require_netns_tools() {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "mDNS tests create network namespaces and need root: run ./scripts/test.sh as root"
    );
    for (program, package) in [
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("curl", "curl"),
    ] {
        require(program, package);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, `a` (10.213.0.1) and `b` (10.213.0.2), joined by a veth pair; deleted on drop.
pub struct NetnsPair {
    /// Namespace of the first host.
    pub a: String,
    /// Namespace of the second host.
    pub b: String,
    /// The first host's address.
    pub ip_a: String,
    /// The second host's address.
    pub ip_b: String,
    /// The veth end in `a`.
    pub veth_a: String,
    /// The veth end in `b`.
    pub veth_b: String,
}

impl NetnsPair {
    /// Creates both namespaces (names unique to this process and call) and the link between them.
    pub fn new() -> NetnsPair {
        require_netns_tools();
        let id = format!(
            "{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let pair = NetnsPair {
            a: format!("nc-mdns-{id}-a"),
            b: format!("nc-mdns-{id}-b"),
            ip_a: "10.213.0.1".into(),
            ip_b: "10.213.0.2".into(),
            // Interface names are at most 15 bytes.
            veth_a: format!("nv{id}a"),
            veth_b: format!("nv{id}b"),
        };
        assert!(pair.veth_a.len() <= 15, "{}", pair.veth_a);
        // From here on, Drop removes whatever was made, even if a later step fails.
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "link",
            "add",
            &pair.veth_a,
            "type",
            "veth",
            "peer",
            "name",
            &pair.veth_b,
        ]);
        ip(&["link", "set", &pair.veth_a, "netns", &pair.a]);
        ip(&["link", "set", &pair.veth_b, "netns", &pair.b]);
        for (ns, veth, addr) in [
            (&pair.a, &pair.veth_a, &pair.ip_a),
            (&pair.b, &pair.veth_b, &pair.ip_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", veth]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", veth, "up"]);
        }
        pair
    }

    /// A command run inside namespace `ns` (`ip netns exec`).
    pub fn cmd(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            // Deleting a namespace also deletes the veth end inside it, and with it its peer.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_a])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process this test started; stopped by its PID on drop (SIGKILL if still running).
pub struct Proc {
    child: Child,
    /// What it is, for messages.
    pub name: String,
    /// Its stderr so far (when captured).
    pub log: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `cmd`, collecting its stderr into [`Proc::log`].
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// Takes charge of a child started elsewhere (its stderr is not collected).
    pub fn adopt(name: &str, child: Child) -> Proc {
        Proc {
            child,
            name: name.to_string(),
            log: Arc::default(),
        }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until its stderr has a line containing `needle`, and returns that line.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} did not stop on SIGTERM:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid(), "KILL");
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// avahi-daemon (with its own dbus-daemon) inside a namespace, in a private mount namespace so that its
/// `/run` is its own (recipes/PEERS.md). Stopped on drop.
pub struct Avahi {
    proc: Proc,
    dir: PathBuf,
}

const AVAHI_RUN: &str = r#"
mount --make-rprivate / && mount -t tmpfs tmpfs /run && mkdir -p /run/dbus /run/avahi-daemon || exit 1
dbus-daemon --system --nofork --nopidfile & D=$!
echo $D > "$2/dbus.pid"
i=0; while [ ! -S /run/dbus/system_bus_socket ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
avahi-daemon --no-rlimits --no-chroot -f "$1" & A=$!
echo $A > "$2/avahi.pid"
trap 'kill $A $D; wait $A; wait $D; exit 0' TERM INT
wait $A
"#;

impl Avahi {
    /// Starts avahi in namespace `ns`, listening on `iface` only, and waits until it answers.
    pub fn start(ns: &str, iface: &str, dir: &Path) -> Avahi {
        require("avahi-daemon", "avahi-daemon");
        require("avahi-browse", "avahi-utils");
        require("dbus-daemon", "dbus");
        std::fs::create_dir_all(dir).expect("avahi folder");
        let conf = dir.join("avahi-daemon.conf");
        std::fs::write(
            &conf,
            format!(
                "[server]\nhost-name=nc-avahi-{}\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces={iface}\n\
                 enable-dbus=yes\n[wide-area]\nenable-wide-area=no\n[publish]\ndisable-publishing=yes\n",
                std::process::id()
            ),
        )
        .expect("write avahi conf");
        let mut cmd = NetnsPair::cmd(ns, "unshare");
        cmd.args(["-m", "sh", "-c", AVAHI_RUN, "sh"])
            .arg(&conf)
            .arg(dir)
            .stdout(Stdio::null());
        let mut avahi = Avahi {
            proc: Proc::spawn("avahi-daemon", &mut cmd),
            dir: dir.to_path_buf(),
        };
        avahi
            .proc
            .wait_for_log("Server startup complete", Duration::from_secs(20));
        avahi
    }

    /// A command in avahi's namespaces (network and mount, so it reaches avahi's dbus).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.proc.pid().to_string(), "-m", "-n", program]);
        c
    }

    /// `avahi-browse -rtp _nix-cache._tcp`: what avahi has resolved, one `=` line per address.
    pub fn browse(&self) -> String {
        let out = self
            .cmd("avahi-browse")
            .args(["-rtp", "_nix-cache._tcp"])
            .output()
            .expect("run avahi-browse");
        assert!(
            out.status.success(),
            "avahi-browse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls [`Avahi::browse`] until `done` holds for its output (at most `timeout`); returns the last output.
    pub fn browse_until(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.browse();
            if done(&out) || start.elapsed() > timeout {
                return out;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Avahi {
    fn drop(&mut self) {
        if let Ok(None) = self.proc.child.try_wait() {
            signal(self.proc.pid(), "TERM");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.proc.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // If the shell could not stop them, end its two daemons by their PIDs.
        for file in ["avahi.pid", "dbus.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(file)) {
                let pid = pid.trim();
                if Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
    }
}
