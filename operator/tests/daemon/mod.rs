//! `miniproxy serve` run in the rig's fake dom0 (tests/rig), and a client
//! of its socket: shared by the test files that talk to the daemon.

use crate::rig::{spawn_args, Rig};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `miniproxy serve`.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Start it in the rig and wait for its `serving socket=...` line.
    pub fn start(r: &Rig) -> Daemon {
        Daemon::start_with(r, &[])
    }

    /// The same with more environment variables.
    pub fn start_with(r: &Rig, vars: &[(&str, &Path)]) -> Daemon {
        let stderr = r.dir.join("serve.err");
        let mut child = r
            .cmd(env!("CARGO_BIN_EXE_miniproxy-operator"))
            .envs(vars.iter().copied())
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let socket = r.dir.join("run/serve.sock");
        assert_eq!(
            first,
            format!("serving socket={}\n", socket.display()),
            "{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        Daemon {
            child,
            socket,
            stderr,
        }
    }

    pub fn connect(&self) -> Client {
        let s = UnixStream::connect(&self.socket).unwrap();
        // A test that would hang fails instead.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            stream: s,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// With MINIPROXY_TRACE: wait (30 s at most) until the daemon has
    /// prepared a hand-over after its `refills`-th refill's fill (whose new
    /// domain fails an older preparation's commit) and is quiet for 100 ms
    /// (no other preparation under way).
    pub fn settled(&self, refills: usize) {
        let t0 = Instant::now();
        loop {
            let e = self.stderr();
            let done = e.matches("refill done").count() >= refills;
            let last = |w: &str| e.rfind(w).map_or(0, |i| i + 1);
            if done && last("hand-over prepared") > last("refill done") {
                std::thread::sleep(Duration::from_millis(100));
                if self.stderr() == e {
                    return;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{e}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    stream: UnixStream,
    pub reader: BufReader<UnixStream>,
}

impl Client {
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn reply(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    /// One request of TAB-separated `words`: its reply line.
    pub fn ask(&mut self, words: &[&str]) -> String {
        self.send(format!("{}\n", words.join("\t")).as_bytes());
        self.reply()
    }
}

/// `spawn` NAME at IP with the pool's memory (4 MiB): warm when a member
/// waits.
pub fn warm_spawn<'a>(name: &'a str, ip: &'a str) -> Vec<&'a str> {
    spawn_args(name, ip, &["--memory", "4"])
}
