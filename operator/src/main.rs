//! `miniproxy`: start, list and stop Miniproxy instances (Xen PV guests) from
//! dom0. It is dom0's `miniproxy` command (`scripts/payload` installs it as
//! PAYLOAD/scripts/miniproxy; from a checkout `scripts/miniproxy` execs
//! it); `miniproxy COMMAND --help`
//! describes each command. Exit status 0 on success, 1 when an operation
//! failed, 2 for a bad invocation; errors go to stderr. Every result is one
//! line on stdout (`--json`: one JSON object per line).

mod args;
mod ask;
mod env;
mod filecache;
mod json;
mod libvirt;
mod list;
mod lock;
mod metrics;
mod pool;
mod render;
mod serve;
mod spawn;
mod stats;
mod stop;
mod warm;
mod xen;
mod xenstore;

use std::process::ExitCode;

pub const PROG: &str = "miniproxy";

/// Why a command did not do its work.
#[derive(Debug)]
pub enum Failure {
    /// A bad invocation (exit 2): the help names the right form.
    Bad(String),
    /// The operation failed (exit 1).
    Fail(String),
    /// Failed, with the reason already printed on stderr (exit 1); the
    /// text is its headline for a caller that did not see stderr (the
    /// daemon's client, crate::serve).
    Reported(String),
}

pub type Outcome = Result<(), Failure>;

pub fn bad<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Bad(msg.into()))
}

pub fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Fail(msg.into()))
}

const USAGE: &str =
    "Usage: miniproxy COMMAND [OPTIONS]     (as root in dom0; needs xl and xenstore-*)
  spawn   start one instance from the template and wait until it serves
          (xl create, or virsh create with --via libvirt)
  list    one line per running instance, with its stats
  stop    stop instances (xl/virsh shutdown, destroy if it does not go)
  metrics every instance's counters for Prometheus (text format 0.0.4)
  pool    the warm pool: fill N, status, drain (instances booted ahead
          that spawn hands a configuration: how=warm)
  serve   a resident spawner: spawn and stop requests over a Unix socket,
          answered without starting a process per request
  ask     send one request to the resident spawner, print its reply, exit
          with its status
`miniproxy COMMAND --help` describes each. Exit status 0 on success, 1 when
an operation failed, 2 for a bad invocation; errors go to stderr.
Files: the template (MINIPROXY_TEMPLATE, or xl-configs/template.cfg of the
repository/payload, or /etc/miniproxy/template.cfg), the kernel
(MINIPROXY_KERNEL, or PAYLOAD/miniproxy, or REPO/target/release/miniproxy), and
per instance in MINIPROXY_RUN_DIR (default /run/miniproxy): NAME.cfg (the
rendered xl config) or NAME.xml (the domain XML, spawned --via libvirt:
its template MINIPROXY_TEMPLATE_XML or xl-configs/template.xml), NAME.domid,
NAME.xl.log or NAME.virsh.log, NAME.lock; and .lock, .slot.N, .ticket,
serve.sock (miniproxy serve). Env:
MINIPROXY_VIA (spawn's default --via: xl), MINIPROXY_LIBVIRT_URI (default
xen:///system), MINIPROXY_BRIDGE (default xenbr0), MINIPROXY_VIF_SCRIPT (default
vif-fast if /etc/xen/scripts/vif-fast exists, else vif-bridge),
MINIPROXY_CONSOLE_DIR (default /var/log/xen/console), MINIPROXY_PARALLEL
(spawns creating and booting, or stops, at once: default dom0's CPUs, at
least 2), MINIPROXY_QUEUE_TIMEOUT (s a spawn may wait for its turn, default
600), MINIPROXY_TRACE=1 (spawn prints its phases' times on stderr).";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // ask's success carries the reply's own status (0, 1 or 2).
    let mut status = 0;
    let (name, result) = match cmd.as_str() {
        "ask" => {
            let (r, n) = ask::main(rest);
            status = n;
            ("ask", r)
        }
        "spawn" => ("spawn", spawn::run(rest)),
        "list" => ("list", list::run(rest)),
        "stop" => ("stop", stop::run(rest)),
        "metrics" => ("metrics", metrics::run(rest)),
        "pool" => ("pool", pool::run(rest)),
        "serve" => ("serve", serve::run(rest)),
        "-h" | "--help" | "help" => ("", help(rest)),
        other => (
            "",
            bad(format!(
                "unknown command '{other}' (spawn, list, stop, metrics, pool, serve, ask)"
            )),
        ),
    };
    let prefix = if name.is_empty() {
        PROG.to_string()
    } else {
        format!("{PROG} {name}")
    };
    match result {
        Ok(()) => ExitCode::from(status),
        Err(Failure::Bad(msg)) => {
            eprintln!("{prefix}: {msg}");
            let see = if name.is_empty() {
                String::new()
            } else {
                format!("{name} ")
            };
            eprintln!("(see '{PROG} {see}--help')");
            ExitCode::from(2)
        }
        Err(Failure::Fail(msg)) => {
            eprintln!("{prefix}: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Reported(_)) => ExitCode::from(1),
    }
}

fn help(rest: &[String]) -> Outcome {
    match rest.first().map(String::as_str) {
        None => println!("{USAGE}"),
        Some("spawn") => print!("{}", spawn::usage()),
        Some("list") => print!("{}", list::USAGE),
        Some("stop") => print!("{}", stop::USAGE),
        Some("metrics") => print!("{}", metrics::USAGE),
        Some("pool") => print!("{}", pool::USAGE),
        Some("serve") => print!("{}", serve::usage()),
        Some("ask") => print!("{}", ask::usage()),
        Some(other) => return bad(format!("no command '{other}'")),
    }
    Ok(())
}
