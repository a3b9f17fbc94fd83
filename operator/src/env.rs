//! Where things are and how many may run at once: the tool's environment
//! (`MINIPROXY_*` variables, the repository or payload directory), its
//! clock and its trace.

use crate::{fail, Failure};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The settings every command reads once.
#[derive(Clone)]
pub struct Env {
    /// Per-instance records: NAME.cfg, NAME.domid, NAME.xl.log, NAME.lock.
    pub run_dir: PathBuf,
    pub bridge: String,
    pub console_dir: PathBuf,
    pub vif_script: String,
    /// The repository, or dom0's payload directory (kernel, xl-configs/).
    pub repo_dir: Option<PathBuf>,
    trace: bool,
    t0: Instant,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Env {
    pub fn load() -> Env {
        add_xl_to_path();
        let vif_script = var("MINIPROXY_VIF_SCRIPT").unwrap_or_else(|| {
            if is_executable(Path::new("/etc/xen/scripts/vif-fast")) {
                "/etc/xen/scripts/vif-fast".into()
            } else {
                "vif-bridge".into()
            }
        });
        // scripts/miniproxy (a checkout's) sets MINIPROXY_REPO_DIR; the
        // payload's scripts/miniproxy is this binary: the directory above
        // its own (symlinks resolved).
        let repo_dir = var("MINIPROXY_REPO_DIR").map(PathBuf::from).or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.to_path_buf())
        });
        Env {
            run_dir: var("MINIPROXY_RUN_DIR")
                .unwrap_or_else(|| "/run/miniproxy".into())
                .into(),
            bridge: var("MINIPROXY_BRIDGE").unwrap_or_else(|| "xenbr0".into()),
            console_dir: var("MINIPROXY_CONSOLE_DIR")
                .unwrap_or_else(|| "/var/log/xen/console".into())
                .into(),
            vif_script,
            repo_dir,
            trace: var("MINIPROXY_TRACE").is_some(),
            t0: Instant::now(),
        }
    }

    /// The same settings and clock over another run directory (the warm
    /// pool's records, crate::pool).
    pub fn under(&self, run_dir: PathBuf) -> Env {
        Env {
            run_dir,
            bridge: self.bridge.clone(),
            console_dir: self.console_dir.clone(),
            vif_script: self.vif_script.clone(),
            repo_dir: self.repo_dir.clone(),
            trace: self.trace,
            t0: self.t0,
        }
    }

    /// The same settings with the clock started now: one request of the
    /// daemon (crate::serve), which loaded them once (Env::load changes
    /// PATH: not for a process with threads).
    pub fn restarted(&self) -> Env {
        Env {
            t0: Instant::now(),
            ..self.clone()
        }
    }

    /// Milliseconds since the command started.
    pub fn ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// With MINIPROXY_TRACE set, once: how long the process ran before this
    /// clock started (exec, loading; 10 ms resolution), from /proc.
    pub fn trace_start(&self) {
        if self.trace {
            let age = process_age_ms().map_or("?".into(), |ms| ms.to_string());
            self.trace(&format!("this process started {age} ms before +0"));
        }
    }

    /// With MINIPROXY_TRACE set: the time since the command started, on stderr.
    pub fn trace(&self, what: &str) {
        if self.trace {
            eprintln!("{}: trace +{} ms {what}", crate::PROG, self.ms());
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.run_dir.join(file)
    }

    /// The unikernel ELF: MINIPROXY_KERNEL, REPO/miniproxy (the payload) or
    /// REPO/target/release/miniproxy, the first that exists.
    pub fn default_kernel(&self) -> Option<PathBuf> {
        let mut c: Vec<PathBuf> = var("MINIPROXY_KERNEL")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        if let Some(r) = &self.repo_dir {
            c.push(r.join("miniproxy"));
            c.push(r.join("target/release/miniproxy"));
        }
        c.into_iter().find(|p| p.is_file())
    }

    /// The xl config template: MINIPROXY_TEMPLATE, REPO/xl-configs/template.cfg
    /// or /etc/miniproxy/template.cfg, the first that exists.
    pub fn default_template(&self) -> Option<PathBuf> {
        let mut c: Vec<PathBuf> = var("MINIPROXY_TEMPLATE")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        if let Some(r) = &self.repo_dir {
            c.push(r.join("xl-configs/template.cfg"));
        }
        c.push("/etc/miniproxy/template.cfg".into());
        c.into_iter().find(|p| p.is_file())
    }

    /// The console log xenconsoled --log=guest writes for NAME.
    pub fn console_file(&self, name: &str) -> PathBuf {
        self.console_dir.join(format!("guest-{name}.log"))
    }
}

/// Milliseconds since this process started: /proc/uptime less the start
/// time in /proc/self/stat (field 22, clock ticks: 100 a second on Linux).
fn process_age_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let up_s: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let up_ms = (up_s * 1000.0) as u64;
    Some(up_ms.saturating_sub(ticks * 10))
}

/// MINIPROXY_PARALLEL: spawns creating and booting, or stops, at once
/// (default: dom0's CPUs, at least 2).
pub fn parallel() -> Result<usize, Failure> {
    Ok(parallel_set()?.unwrap_or_else(default_parallel))
}

/// MINIPROXY_PARALLEL checked, if it is set.
pub fn parallel_set() -> Result<Option<usize>, Failure> {
    match std::env::var("MINIPROXY_PARALLEL") {
        Ok(v) if !v.is_empty() => match v.parse::<usize>() {
            Ok(n) if n >= 1 && !v.starts_with('0') && !v.starts_with('+') => Ok(Some(n)),
            _ => fail(format!(
                "MINIPROXY_PARALLEL must be a positive number, not '{v}'"
            )),
        },
        _ => Ok(None),
    }
}

/// MINIPROXY_PARALLEL's default: dom0's CPUs, at least 2 (std reads the
/// affinity mask and the cgroup's quota: files a warm spawn need not read).
pub fn default_parallel() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(2)
}

/// MINIPROXY_QUEUE_TIMEOUT in ms (default 600 s): how long a spawn may wait
/// for a create slot.
pub fn queue_timeout() -> Result<(u64, String), Failure> {
    let v = var("MINIPROXY_QUEUE_TIMEOUT").unwrap_or_else(|| "600".into());
    match crate::args::parse_secs(&v) {
        Some(ms) => Ok((ms, v)),
        None => fail(format!(
            "MINIPROXY_QUEUE_TIMEOUT must be seconds (e.g. 600), not '{v}'"
        )),
    }
}

/// The first executable `name` on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Debian keeps xl in /usr/sbin (a wrapper) or only in /usr/lib/xen-X.Y/bin:
/// append those directories to PATH (after what is there, so a PATH that
/// has an xl keeps it).
fn add_xl_to_path() {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<String> = path.split(':').map(String::from).collect();
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("xen-"))
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    for d in ["/usr/lib/xen/bin", "/usr/sbin", "/sbin"] {
        candidates.push(d.into());
    }
    let mut changed = false;
    for d in candidates {
        let s = d.to_string_lossy().into_owned();
        if is_executable(&d.join("xl")) && !dirs.contains(&s) {
            dirs.push(s);
            changed = true;
        }
    }
    if changed {
        // Single-threaded here, at the start of main.
        std::env::set_var("PATH", dirs.join(":"));
    }
}

/// Root (xl needs it) and an xl on PATH.
pub fn need_root() -> Result<(), Failure> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        return fail("must run as root (xl needs it)");
    }
    if find_in_path("xl").is_none() {
        return fail("xl not found (install the Xen tools)");
    }
    Ok(())
}
