//! `miniproxy spawn`: check everything, render the config, queue for a
//! create slot, xl create (or virsh create: crate::libvirt), wait for the
//! guest's data/ready.

use crate::args::{self, Spawn};
use crate::env::{self, Env};
use crate::json::Object;
use crate::libvirt::{self, Via};
use crate::render::{self, Values};
use crate::xenstore::Xs;
use crate::{fail, lock, pool, xen, Failure, Outcome};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn usage() -> String {
    let env = Env::load();
    let kernel = env
        .default_kernel()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none found".into());
    format!(
        "Usage: miniproxy spawn --name NAME --mode reverse|transparent --listen PORT
                 [--upstream IP:PORT] --ip A.B.C.D/LEN|dhcp [--gw IP]
                 [--memory MB] [--profile default|small] [--mac MAC]
                 [--extra 'key=value ...'] [--kernel PATH] [--timeout S]
                 [--via xl|libvirt] [--json]
Start one Miniproxy instance and wait until it serves (its data/ready key).
  --name NAME      domain name (letters, digits, _ . -); must not be in use
  --mode MODE      reverse: splice connections to the instance's PORT to
                   --upstream; transparent: intercept connections to PORT of
                   any address routed through the instance, splice each to its
                   original destination
  --listen PORT    the port the rule listens on (1..65535)
  --upstream IP:PORT   the server (reverse mode only; required there)
  --ip CIDR        the instance's address (or dhcp)     --gw IP  default router
  --memory MB      guest memory, default 6; 4 is the smallest xl builds
  --profile P      buffer/connection sizing: default (rx_bufs=64 max_conns=64,
                   needs memory>=6) or small (rx_bufs=32 max_conns=64, for
                   memory=4); default: small below 6 MB
  --mac MAC        the NIC's MAC; default 00:16:3e + a hash of the name
  --extra TOKENS   more extra= tokens (proxy/README.md, \"Configuration\"), e.g.
                   'idle_exit=10m rule=reverse:443:10.0.0.1:8443'; they
                   override the profile's; ip= and gw= go in --ip/--gw
  --kernel PATH    the unikernel ELF (default: {kernel})
  --timeout S      give up if it is not ready S seconds (default 60) after
                   xl create starts: the half-started domain is destroyed and
                   its console shown (time queued for a create slot, below,
                   is not counted; MINIPROXY_QUEUE_TIMEOUT bounds it, 600 s)
  --via TOOL       xl (default, or MINIPROXY_VIA): render the xl template,
                   xl create; libvirt: render the domain XML template
                   (MINIPROXY_TEMPLATE_XML, or xl-configs/template.xml) into
                   {run}/NAME.xml and virsh create it (libvirtd's Xen driver,
                   MINIPROXY_LIBVIRT_URI, default xen:///system). The same
                   guest either way; stop uses the same tool again
  --json           print the result as one JSON object
The whole configuration line is checked with the guest's own parser, and
must be at most {max} bytes (what the guest takes of Xen's command line), before anything
is created. Renders the template into {run}/NAME.cfg, runs xl create,
waits, and prints one line:
  spawned name=NAME domid=ID ready_ms=MS ip=CIDR mac=MAC memory=MB mode=MODE wait_ms=MS create_ms=MS guest_us=US how=cold|warm
ready_ms: from this command's start to the ready key; of that, wait_ms
waiting for a create slot and create_ms in xl (virsh) create; guest_us: the guest's
own time from its first instruction to ready.
Warm pool ('miniproxy pool --help'): when a member booted by 'pool fill'
waits with this --memory and the line's boot-time keys (rx_bufs, tx_bufs,
offload), and there is no --mac, --kernel or --via libvirt, spawn takes it
instead of creating a domain: it writes the line to the member's
/local/domain/ID/miniproxy/config, renames it to NAME, waits for ready and
starts the refill in the background ('pool fill --refill'; a thread of
'miniproxy serve' for its spawns) (how=warm; wait_ms is then the wait
for the global lock, create_ms the hand-over (its checks, the key and the
rename: one xenstore transaction), guest_us the member's own time
from its configuration to ready). Otherwise, or with an empty pool, how=cold.
--via libvirt is always cold.
'miniproxy serve' takes spawn requests over a Unix socket: no process per
spawn, the same result line.
Safe to run many at once: at most MINIPROXY_PARALLEL (default: dom0's CPUs,
at least 2) create and boot at the same time, the others queue.
",
        max = args::MAX_CMDLINE,
        run = env.run_dir.display()
    )
}

/// Remove an instance's record files.
pub fn forget(env: &Env, name: &str) {
    for suffix in ["cfg", "xml", "domid", "xl.log", "virsh.log"] {
        let _ = std::fs::remove_file(env.path(&format!("{name}.{suffix}")));
    }
}

/// How instance NAME was created: its record is NAME.xml (libvirt) or
/// NAME.cfg (xl); `None` if there is no record.
pub fn via_of(env: &Env, name: &str) -> Option<Via> {
    [Via::Libvirt, Via::Xl]
        .into_iter()
        .find(|v| env.path(&format!("{name}.{}", v.suffix())).is_file())
}

/// Ask the toolstack that made instance NAME to destroy it; `xl destroy
/// XL_TARGET` (the name or the domid) when that fails (libvirtd gone, or
/// it no longer knows the domain).
pub fn destroy(env: &Env, name: &str, xl_target: &str) {
    if via_of(env, name) == Some(Via::Libvirt) && libvirt::virsh_ok("destroy", &[name]) {
        return;
    }
    xen::xl_ok(&["destroy", xl_target]);
}

/// The live domid of instance NAME (from its record), if it still exists.
pub fn domain_of(env: &Env, name: &str) -> Option<u32> {
    let id: u32 = std::fs::read_to_string(env.path(&format!("{name}.domid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (xen::read(&format!("/local/domain/{id}/name"))? == name).then_some(id)
}

pub fn spawning(env: &Env, name: &str) -> bool {
    lock::is_held(&env.path(&format!("{name}.lock")))
}

pub(crate) fn console_size(env: &Env, name: &str) -> u64 {
    std::fs::metadata(env.console_file(name))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The last `lines` lines of NAME's console written since `offset`.
pub(crate) fn console_since(env: &Env, name: &str, offset: u64, lines: usize) -> String {
    let f = env.console_file(name);
    let Ok(bytes) = std::fs::read(&f) else {
        return format!("(no console log at {})", f.display());
    };
    let from = if bytes.len() as u64 >= offset {
        offset as usize
    } else {
        0
    };
    let text = String::from_utf8_lossy(&bytes[from..]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn run(argv: &[String]) -> Outcome {
    let env = Env::load();
    env.trace_start();
    let Some(s) = args::parse_spawn(argv)? else {
        print!("{}", usage());
        return Ok(());
    };
    let line = spawn(&env, &s, &mut None, &pool::refill_in_background)?;
    println!("{line}");
    env.trace("printed");
    Ok(())
}

/// env::need_root, its success kept by the process while the xl it found
/// is still there (one stat): the effective user does not change, and
/// reading /proc and searching PATH again costs the daemon each request.
fn need_root_once() -> Result<(), Failure> {
    static XL: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut xl = XL.lock().unwrap_or_else(|p| p.into_inner());
    if xl.as_deref().is_some_and(Path::is_file) {
        return Ok(());
    }
    env::need_root()?;
    *xl = env::find_in_path("xl");
    Ok(())
}

/// Spawn `s`: its result line (or JSON object), not printed. `xs`: the
/// connection to xenstored the warm path uses (opened into it when the
/// spawn may take a pool member and it is `None`; the daemon passes its
/// own, crate::serve). `refill`: starts the pool's refill once a member is
/// taken (a detached process from the CLI, a thread in the daemon).
pub fn spawn(
    env: &Env,
    s: &Spawn,
    xs: &mut Option<Xs>,
    refill: &dyn Fn(&Env),
) -> Result<String, Failure> {
    let kernel = match &s.kernel {
        Some(k) => {
            let p = PathBuf::from(k);
            if !crate::filecache::readable_file(&p) {
                return fail(format!("kernel '{k}' not found (or not readable)"));
            }
            p
        }
        None => match env.default_kernel() {
            Some(p) => p,
            None => return fail("no kernel found: pass --kernel PATH or set MINIPROXY_KERNEL (build it with cargo build --release -p kernel --bins)"),
        },
    };
    let kernel = std::path::absolute(&kernel)
        .unwrap_or(kernel)
        .display()
        .to_string();
    if kernel.contains(['"', '\'', '\n']) {
        return fail(format!(
            "kernel path '{kernel}' has a quote or newline in it"
        ));
    }
    let via = match s.via {
        Some(v) => v,
        None => libvirt::via_from_env()?,
    };
    let template_path = match via {
        Via::Xl => env
            .default_template()
            .ok_or("no template found: set MINIPROXY_TEMPLATE (xl-configs/template.cfg)"),
        Via::Libvirt => libvirt::default_template(env)
            .ok_or("no template found: set MINIPROXY_TEMPLATE_XML (xl-configs/template.xml)"),
    }
    .or_else(fail)?;
    // Kept by the process while unchanged (crate::filecache): the daemon's
    // spawns do not read it again.
    let template = crate::filecache::read_text(&template_path)
        .or_else(|e| fail(format!("cannot read {}: {e}", template_path.display())))?;
    let (queue_ms, queue_text) = env::queue_timeout()?;
    let parallel = env::parallel_set()?;

    need_root_once()?;
    if via == Via::Libvirt {
        libvirt::need_virsh()?;
    }
    std::fs::create_dir_all(&env.run_dir)
        .or_else(|e| fail(format!("cannot create {}: {e}", env.run_dir.display())))?;
    env.trace("checked the arguments");

    // Held for the whole spawn: a second spawn of NAME fails at once.
    let name = &s.name;
    let _name_lock = match lock::try_take(&env.path(&format!("{name}.lock"))) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return fail(format!(
                "name '{name}' is in use: another spawn of it is running"
            ))
        }
        Err(e) => {
            return fail(format!(
                "cannot lock {}/{name}.lock: {e}",
                env.run_dir.display()
            ))
        }
    };
    // A spawn that may take a pool member talks to xenstored itself, on
    // one connection from here to ready (no xenstore-* or xl process: each
    // costs tens of ms in a dom0 under TCG); without one it goes cold.
    let may_warm = pool::cold_reason(s, via).is_none() && pool::pool_env(env).run_dir.is_dir();
    if may_warm && xs.is_none() {
        match Xs::open() {
            Ok(x) => *xs = Some(x),
            Err(e) => env.trace(&format!("{e}: no warm spawn")),
        }
    }
    match xs.as_mut().filter(|_| may_warm) {
        // A waiting pool member that fits: hand it the configuration. The
        // warm path checks the name itself (with the member, one round
        // trip), also when it then finds none and the spawn goes cold.
        Some(xs) => {
            let files = (kernel.as_str(), template.as_str(), template_path.as_path());
            if let Some(line) = crate::warm::warm(env, s, files, xs, refill)? {
                return Ok(line);
            }
            env.trace("no pool member fits: cold");
        }
        None => {
            if let Some(id) = xen::domid_of(name) {
                return fail(format!("name '{name}' is in use: domain {id} exists"));
            }
            env.trace("name is free");
        }
    }

    let (mac, ticket) = place_config(env, s, via, &kernel, &template, &template_path)?;
    env.trace(&format!(
        "config {}/{name}.{} in place",
        env.run_dir.display(),
        via.suffix()
    ));

    // At most MINIPROXY_PARALLEL spawns create and boot at once: twenty xl
    // creates at once leave a small dom0 so busy that netback and xenstored
    // answer a booting guest too late. The queue has its own bound; --timeout
    // counts from the slot on.
    let w0 = env.ms();
    let parallel = parallel.unwrap_or_else(env::default_parallel);
    let Some(_slot) = take_slot(env, ticket, parallel, Duration::from_millis(queue_ms)) else {
        forget(env, name);
        return fail(format!(
            "no free create slot within {queue_text} s (MINIPROXY_QUEUE_TIMEOUT)"
        ));
    };
    let wait_ms = env.ms() - w0;
    let deadline_ms = env.ms() + s.timeout_ms;
    env.trace(&format!("create slot taken after {wait_ms} ms"));

    let con0 = console_size(env, name);
    let c0 = env.ms();
    let id = create(env, name, via, deadline_ms)?;
    let create_ms = env.ms() - c0;
    let _ = std::fs::write(env.path(&format!("{name}.domid")), format!("{id}\n"));
    env.trace(&format!("create done: domain {id}"));

    let ready = match wait_ready(env, s, name, id, con0, deadline_ms) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("miniproxy spawn: {name} (domain {id}): {why}; destroying it. Its console:");
            std::thread::sleep(Duration::from_millis(200));
            for l in console_since(env, name, con0, 20).lines() {
                eprintln!("  | {l}");
            }
            destroy(env, name, name);
            forget(env, name);
            return Err(Failure::Reported(format!(
                "{name} (domain {id}): {why}; destroyed it"
            )));
        }
    };
    env.trace("ready");
    Ok(spawned_line(
        env,
        s,
        (id, None),
        &mac,
        [wait_ms, create_ms],
        ready.trim().parse().ok(),
        "cold",
    ))
}

/// The result line (or object): `how` is warm (a pool member) or cold.
pub(crate) fn spawned_line(
    env: &Env,
    s: &Spawn,
    (id, addr): (u32, Option<String>),
    mac: &str,
    [wait_ms, create_ms]: [u64; 2],
    guest_us: Option<u64>,
    how: &str,
) -> String {
    let ms = env.ms();
    let name = &s.name;
    let addr = addr
        .or_else(|| xen::read(&format!("/local/domain/{id}/data/ip")))
        .unwrap_or_else(|| s.ip.clone());
    let ready = guest_us.map_or("-".into(), |u| u.to_string());
    if s.json {
        let o = Object::default()
            .str("result", "spawned")
            .str("name", name)
            .num("domid", id.into())
            .num("ready_ms", ms)
            .str("ip", &addr)
            .str("mac", mac)
            .num("memory", s.memory.into())
            .str("mode", s.mode.name())
            .num("wait_ms", wait_ms)
            .num("create_ms", create_ms)
            .opt_num("guest_us", guest_us)
            .str("how", how);
        o.finish()
    } else {
        format!(
            "spawned name={name} domid={id} ready_ms={ms} ip={addr} mac={mac} memory={} mode={} wait_ms={wait_ms} create_ms={create_ms} guest_us={ready} how={how}",
            s.memory,
            s.mode.name()
        )
    }
}

/// The live instance (other than NAME) that has `s`'s static address.
pub(crate) fn ip_in_use(
    env: &Env,
    s: &Spawn,
    records: &[(String, Vec<(String, String)>)],
) -> Option<String> {
    records
        .iter()
        .filter(|(other, meta)| other != &s.name && ip_clash(s, meta))
        .find(|(other, _)| domain_of(env, other).is_some() || spawning(env, other))
        .map(|(other, _)| other.clone())
}

/// `s` asks for the static address of the record `meta`.
fn ip_clash(s: &Spawn, meta: &[(String, String)]) -> bool {
    s.ip != "dhcp"
        && render::meta_get(meta, "ip").map(|v| v.split('/').next() == s.ip.split('/').next())
            == Some(true)
}

/// Render NAME.cfg and, under the global lock, check that no live instance
/// has this address or MAC, then put it in place. A generated MAC that
/// another live instance has is hashed again, salted. Returns the MAC and
/// this spawn's queue ticket.
fn place_config(
    env: &Env,
    s: &Spawn,
    via: Via,
    kernel: &str,
    template: &str,
    template_path: &Path,
) -> Result<(String, u64), Failure> {
    let name = &s.name;
    let when = utc_now();
    let tpath = template_path.display().to_string();
    let mut mac = s.mac.clone().unwrap_or_else(|| args::mac_of(name));
    let render_for = |mac: &str| {
        let v = Values {
            spawn: s,
            kernel,
            bridge: &env.bridge,
            mac,
            vif_script: &env.vif_script,
        };
        match via {
            Via::Xl => render::render(template, &tpath, &when, &v),
            Via::Libvirt => libvirt::render(template, &tpath, &when, &v),
        }
    };
    let mut text = render_for(&mac).or_else(fail)?;
    let wait = Duration::from_millis(s.timeout_ms.saturating_sub(env.ms()).max(1000));
    let global = env.path(".lock");
    let _global = match lock::take_within(&global, wait) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return fail(format!(
                "could not take {} within {} s (--timeout)",
                global.display(),
                wait.as_secs()
            ))
        }
        Err(e) => return fail(format!("cannot lock {}: {e}", global.display())),
    };
    let records = records(env);
    let mut salt = 0;
    'again: loop {
        for (other, meta) in &records {
            if other == name {
                continue;
            }
            let ip_clash = ip_clash(s, meta);
            let mac_clash = render::meta_get(meta, "mac") == Some(mac.as_str());
            if !ip_clash && !mac_clash {
                continue;
            }
            if domain_of(env, other).is_none() && !spawning(env, other) {
                continue;
            }
            if ip_clash {
                let addr = s.ip.split('/').next().unwrap_or("");
                return fail(format!("address {addr} is in use by instance '{other}'"));
            }
            if s.mac.is_none() && salt < 16 {
                salt += 1;
                mac = args::mac_of(&format!("{name}#{salt}"));
                text = render_for(&mac).or_else(fail)?;
                continue 'again;
            }
            return fail(format!(
                "MAC {mac} is in use by instance '{other}' (pass another --mac)"
            ));
        }
        break;
    }
    // A stale record of the other kind (a spawn that died) must not say
    // how this instance is stopped.
    forget(env, name);
    let cfg = env.path(&format!("{name}.{}", via.suffix()));
    let tmp = env.path(&format!(".{name}.{}.{}", via.suffix(), std::process::id()));
    std::fs::write(&tmp, text).or_else(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &cfg).or_else(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(format!("cannot write {}: {e}", cfg.display()))
    })?;
    let ticket_file = env.path(".ticket");
    let ticket: u64 = std::fs::read_to_string(&ticket_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let _ = std::fs::write(&ticket_file, format!("{}\n", (ticket + 1) % 1_000_000));
    Ok((mac, ticket))
}

/// Every record in the run directory: (name, its record line's pairs), sorted.
pub fn records(env: &Env) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = std::fs::read_dir(&env.run_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let file = e.file_name().to_string_lossy().into_owned();
                    let name = file
                        .strip_suffix(".cfg")
                        .or_else(|| file.strip_suffix(".xml"))?
                        .to_string();
                    if name.starts_with('.') {
                        return None;
                    }
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    Some((name, render::read_meta(&text).unwrap_or_default()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// One of the create slots (`RUN_DIR/.slot.N`): a free one if there is one,
/// else wait (blocked) for slot TICKET % N.
pub fn take_slot(env: &Env, ticket: u64, n: usize, wait: Duration) -> Option<std::fs::File> {
    for i in 0..n as u64 {
        let k = (i + ticket) % n as u64;
        if let Ok(Some(f)) = lock::try_take(&env.path(&format!(".slot.{k}"))) {
            return Some(f);
        }
    }
    let k = ticket % n as u64;
    lock::take_within(&env.path(&format!(".slot.{k}")), wait)
        .ok()
        .flatten()
}

/// xl (virsh) create; rc 134 with the domain present counts as created
/// (xl's abort at exit); any other failure is retried once after clearing
/// a half-made domain, unless the tool said the config is bad.
pub fn create(env: &Env, name: &str, via: Via, deadline_ms: u64) -> Result<u32, Failure> {
    let log = env.path(&format!("{name}.{}", via.log_suffix()));
    let cfg = env
        .path(&format!("{name}.{}", via.suffix()))
        .display()
        .to_string();
    let tool = match via {
        Via::Xl => "xl",
        Via::Libvirt => "virsh",
    };
    let _ = std::fs::write(&log, "");
    // Bounded by --timeout, as the wait for ready is.
    let left = || Duration::from_millis(deadline_ms.saturating_sub(env.ms()).max(1));
    for attempt in 1..=2 {
        let rc = match via {
            Via::Xl => xen::xl_create(&cfg, &log, left()),
            // One virsh create at a time (RUN_DIR/.virsh.lock): with two at
            // once libvirtd 9.0's Xen driver hung for good in the testbed
            // (tests/xen/60-libvirt.sh), the domains' boots still overlap.
            Via::Libvirt => match lock::take_within(&env.path(".virsh.lock"), left()) {
                Ok(Some(_one)) => libvirt::virsh_create(&cfg, &log, left()),
                _ => {
                    append(
                        &log,
                        "another virsh create held .virsh.lock until --timeout\n",
                    );
                    None
                }
            },
        };
        let created = matches!(rc, Some(0) | Some(134));
        // A busy xenstore (other domains appearing or going at the same
        // moment) can fail one lookup: when xl said it created the domain,
        // ask a few times before calling it failed.
        let mut id = None;
        for _ in 0..5 {
            id = xen::domid_of(name);
            if id.is_some() || !created {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match id {
            Some(id) if created => return Ok(id),
            Some(_) => destroy(env, name, name),
            None => {}
        }
        let rc_text = rc.map_or("none".into(), |c| c.to_string());
        append(
            &log,
            &format!(
                "miniproxy spawn: {name}: {tool} create failed (attempt {attempt}, rc {rc_text})\n"
            ),
        );
        if env.ms() >= deadline_ms {
            break; // --timeout is up: no second attempt
        }
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        if ["parsing error", "Failed to parse", "unknown"]
            .iter()
            .chain(libvirt::BAD_CONFIG_WORDS.iter())
            .any(|w| out.contains(w))
        {
            break; // a bad config: no retry
        }
    }
    eprintln!("miniproxy spawn: {name}: {tool} create failed; its output:");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = out.lines().collect();
    for l in &lines[lines.len().saturating_sub(15)..] {
        eprintln!("  | {l}");
    }
    forget(env, name);
    Err(Failure::Reported(format!("{name}: {tool} create failed")))
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Wait for data/ready, the guest's own "serving" mark (its value: the
/// guest's µs to ready). A xenstore watch wakes us when it is written; at
/// least every 2 s we also look for a crash (the kernel's "fatal:" console
/// line) or a vanished domain.
pub(crate) fn wait_ready(
    env: &Env,
    s: &Spawn,
    console_name: &str,
    id: u32,
    con0: u64,
    deadline_ms: u64,
) -> Result<String, String> {
    let xs = format!("/local/domain/{id}");
    let ready_key = format!("{xs}/data/ready");
    for i in 0u64.. {
        if let Some(ready) = xen::read(&ready_key) {
            return Ok(ready);
        }
        if i % 2 == 1
            && console_since(env, console_name, con0, usize::MAX).contains("miniproxy: fatal:")
        {
            return Err("the guest stopped with a fatal error".into());
        }
        if xen::read(&format!("{xs}/name")).is_none() {
            return Err("the domain went away".into());
        }
        if i % 5 == 4 {
            // A backstop for a crash that printed nothing.
            let state = xen::xl_state(id).unwrap_or_default();
            if state.contains('c') {
                return Err("the domain crashed".into());
            }
            if state.contains('s') {
                return Err("the domain shut down".into());
            }
        }
        let left = deadline_ms.saturating_sub(env.ms());
        if left == 0 {
            return Err(format!("not ready after {} s", s.timeout_text));
        }
        xen::wait_event(&ready_key, Duration::from_millis(left.min(2000)));
    }
    unreachable!("the loop returns")
}
