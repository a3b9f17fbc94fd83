//! A three-namespace testbed for `miniproxy-tap` with real Linux TCP, shared by
//! the TAP integration test and the benchmark (`miniproxy-bench`).
//!
//! ```text
//!   mp<tag>cl (client)          mp<tag>px (proxy)                  mp<tag>sv (server)
//!   eth0 10.9.0.10/24 ── veth ── br0 (10.9.0.3/24) ── veth ── eth0 10.9.0.20/24
//!   10.9.1.0/24 via 10.9.0.2       └─ tap0 = miniproxy 10.9.0.2   lo 10.9.1.1-3/32
//! ```
//!
//! 10.9.0.3 (the bridge's own address in the proxy namespace) is where a Linux
//! proxy (HAProxy, socat) listens for comparison. Everything is removed on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PROXY_IP: &str = "10.9.0.2";
pub const LINUX_PROXY_IP: &str = "10.9.0.3";
pub const CLIENT_IP: &str = "10.9.0.10";
pub const SERVER_IP: &str = "10.9.0.20";
pub const FAR_IPS: [&str; 3] = ["10.9.1.1", "10.9.1.2", "10.9.1.3"];

/// Whether the process runs as root (reads /proc, no libc).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn sh(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

pub struct Proxy {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub banner: Vec<String>,
}

pub struct Testbed {
    pub tag: String,
    pub bins: PathBuf,
    children: Vec<Child>,
    proxy: Option<Proxy>,
}

impl Testbed {
    /// Create the namespaces and links.
    pub fn new(tag: &str, bins: PathBuf) -> Result<Testbed, String> {
        let tag = format!("{tag}{}", std::process::id());
        let tb = Testbed {
            tag,
            bins,
            children: Vec::new(),
            proxy: None,
        };
        let (px, cl, sv) = (tb.ns("px"), tb.ns("cl"), tb.ns("sv"));
        for n in [&px, &cl, &sv] {
            sh(&["ip", "netns", "add", n])?;
            sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        sh(&["ip", "-n", &px, "link", "add", "br0", "type", "bridge"])?;
        sh(&[
            "ip",
            "-n",
            &px,
            "addr",
            "add",
            &format!("{LINUX_PROXY_IP}/24"),
            "dev",
            "br0",
        ])?;
        sh(&["ip", "-n", &px, "link", "set", "br0", "up"])?;
        for (n, ip, port) in [(&cl, CLIENT_IP, "vcl"), (&sv, SERVER_IP, "vsv")] {
            sh(&[
                "ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", &px,
            ])?;
            sh(&["ip", "-n", &px, "link", "set", port, "master", "br0", "up"])?;
            sh(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", n, "link", "set", "eth0", "up"])?;
        }
        // The far addresses live on the server's loopback (no dummy module needed).
        for ip in FAR_IPS {
            sh(&[
                "ip",
                "-n",
                &sv,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "lo",
            ])?;
        }
        sh(&[
            "ip",
            "-n",
            &cl,
            "route",
            "add",
            "10.9.1.0/24",
            "via",
            PROXY_IP,
        ])?;
        Ok(tb)
    }

    pub fn ns(&self, role: &str) -> String {
        format!("mp{}{role}", self.tag)
    }

    fn exec_cmd(&self, role: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(role), prog]);
        c
    }

    pub fn tool(&self) -> String {
        self.bins.join("miniproxy-tcptool").display().to_string()
    }

    /// Start a long-running program in a namespace; killed on drop.
    pub fn spawn(&mut self, role: &str, prog: &str, args: &[&str]) -> Result<(), String> {
        let child = self
            .exec_cmd(role, prog)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {prog}: {e}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Run a program in a namespace to completion: (success, stdout+stderr).
    pub fn run(&self, role: &str, prog: &str, args: &[&str]) -> (bool, String) {
        match self.exec_cmd(role, prog).args(args).output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("{prog}: {e}")),
        }
    }

    /// Start the checked TCP server on `port` in the server namespace and wait until it listens.
    pub fn start_server(&mut self, port: u16) -> Result<(), String> {
        let tool = self.tool();
        self.spawn("sv", &tool, &["serve", &port.to_string()])?;
        self.wait_listening("sv", SERVER_IP, port)
    }

    /// Wait until `ip:port` accepts connections (seen from `role`).
    pub fn wait_listening(&self, role: &str, ip: &str, port: u16) -> Result<(), String> {
        let start = Instant::now();
        let tool = self.tool();
        loop {
            // A "who" exchange succeeds only once the server answers.
            let (ok, _) = self.run(
                role,
                &tool,
                &[
                    "client",
                    &format!("{ip}:{port}"),
                    "--op",
                    "who",
                    "--timeout",
                    "2",
                ],
            );
            if ok {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("{ip}:{port} not listening after 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start `miniproxy-tap` in the proxy namespace with `config`, attach its TAP
    /// device to the bridge and wait until it answers.
    pub fn start_proxy(&mut self, config: &str) -> Result<(), String> {
        let runner = self.bins.join("miniproxy-tap").display().to_string();
        let mut child = self
            .exec_cmd("px", &runner)
            .args(["--tap", "tap0", "--stdin-exit", "--"])
            .args(config.split_whitespace())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting miniproxy-tap: {e}"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut banner = Vec::new();
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                let _ = child.wait();
                return Err(format!(
                    "miniproxy-tap exited early: {}",
                    banner.join(" | ")
                ));
            }
            let ready = line.contains("ready on");
            banner.push(line.trim().to_string());
            if ready {
                break;
            }
        }
        self.proxy = Some(Proxy {
            child,
            stdin,
            stdout,
            banner,
        });
        sh(&[
            "ip",
            "-n",
            &self.ns("px"),
            "link",
            "set",
            "tap0",
            "master",
            "br0",
            "up",
        ])?;
        Ok(())
    }

    /// Stop `miniproxy-tap` cleanly; returns its final stats line.
    pub fn stop_proxy(&mut self) -> Result<String, String> {
        let mut p = self.proxy.take().ok_or("no proxy running")?;
        drop(p.stdin.take()); // EOF: the runner exits and prints its stats
        let mut last = String::new();
        let start = Instant::now();
        loop {
            let mut line = String::new();
            match p.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.contains("stats:") {
                        last = line.trim().to_string();
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        let status = p.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("miniproxy-tap exited with {status}"));
        }
        Ok(last)
    }

    /// Put a delay line (`ms` each way) between the bridge and the server: the
    /// server's port moves to a second bridge joined to the first through
    /// `miniproxy-tcptool delayline`. Client <-> proxy stays undelayed.
    pub fn insert_delay(&mut self, ms: u32) -> Result<(), String> {
        let px = self.ns("px");
        sh(&["ip", "-n", &px, "link", "add", "br1", "type", "bridge"])?;
        sh(&["ip", "-n", &px, "link", "set", "br1", "up"])?;
        sh(&["ip", "-n", &px, "link", "set", "vsv", "master", "br1"])?;
        let tool = self.tool();
        let mut child = self
            .exec_cmd("px", &tool)
            .args(["delayline", "dla", "dlb", &ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting delayline: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        self.children.push(child);
        if !line.contains("ready") {
            return Err(format!("delayline: {line}"));
        }
        sh(&["ip", "-n", &px, "link", "set", "dla", "master", "br0", "up"])?;
        sh(&["ip", "-n", &px, "link", "set", "dlb", "master", "br1", "up"])?;
        Ok(())
    }

    /// Start HAProxy (`mode tcp`) in the proxy namespace on 10.9.0.3:80 -> server:8080.
    pub fn start_haproxy(&mut self) -> Result<(), String> {
        let cfg = std::env::temp_dir().join(format!("miniproxy-haproxy-{}.cfg", self.tag));
        std::fs::write(
            &cfg,
            format!(
                "global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
                   timeout client 60s
  timeout server 60s
frontend f
  bind {LINUX_PROXY_IP}:80
                   default_backend b
backend b
  server s1 {SERVER_IP}:8080
"
            ),
        )
        .map_err(|e| e.to_string())?;
        let c = cfg.display().to_string();
        self.spawn("px", "haproxy", &["-db", "-f", &c])?;
        self.wait_listening("cl", LINUX_PROXY_IP, 80)
    }

    /// Start socat in the proxy namespace on 10.9.0.3:81 -> server:8080.
    pub fn start_socat(&mut self) -> Result<(), String> {
        self.spawn(
            "px",
            "socat",
            &[
                &format!("TCP-LISTEN:81,bind={LINUX_PROXY_IP},fork,reuseaddr,backlog=1024"),
                &format!("TCP:{SERVER_IP}:8080"),
            ],
        )?;
        self.wait_listening("cl", LINUX_PROXY_IP, 81)
    }

    /// Write one line to the proxy's stdin (unused by the runner; keeps the pipe alive).
    pub fn poke_proxy(&mut self) {
        if let Some(p) = &mut self.proxy {
            if let Some(s) = &mut p.stdin {
                let _ = s.write_all(b"\n");
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for role in ["cl", "sv", "px"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}
