//! `miniproxy pool`: the warm pool (README, "The warm pool"). Instances
//! booted ahead of time with `pool=on` (vif connected, no configuration,
//! blocked in Xen: no CPU, no xenstore traffic) that `spawn` hands a
//! configuration through the xenstore key `/local/domain/ID/miniproxy/config`
//! (dom0's, read-only for the guest) instead of creating a domain.
//!
//! Records: `RUN_DIR/pool/` holds the members as `RUN_DIR` holds instances
//! (`mp-pool-K.cfg`, `.domid`, `.xl.log`), so `list`, `metrics` and
//! `stop --all` never see them; `RUN_DIR/pool/target` the size `pool fill`
//! was last asked for and its memory. A spawn that takes a member moves it
//! out of the pool under the global lock (`RUN_DIR/.lock`), so two spawns
//! never take the same one, and starts a detached `pool fill --refill`.
//! `RUN_DIR/pool/.fill.lock`: one fill at a time.

use crate::args::flags::{self, Arg, Flag};
use crate::args::{self, Mode, Spawn};
use crate::env::{self, Env};
use crate::json::Object;
use crate::libvirt::Via;
use crate::render::{self, Values};
use crate::spawn::{self, forget, records};
use crate::{bad, fail, lock, xen, Failure, Outcome};
use proxy::config::Config;
use std::time::Duration;
use Condition::{Crashed, Orphan, Starting, Waiting};

pub const USAGE: &str = "Usage: miniproxy pool fill N [--memory MB] [--json]
       miniproxy pool status [--json]
       miniproxy pool drain [--json]
The warm pool: instances booted ahead of time that wait, vif connected, for
a configuration; 'miniproxy spawn' hands one its configuration instead of
creating a domain (how=warm in its result line), which saves xl create and
the guest's boot. A waiting member is blocked in Xen: it costs its memory,
no CPU and no xenstore traffic.
  fill N     keep N members (named mp-pool-K): create the missing ones from
             the template (extra=\"pool=on\" and the boot-time keys of the
             memory's profile) and wait until each says data/pool=waiting.
             N is stored as the pool's target; after a spawn takes a member
             a detached 'pool fill --refill' (a thread of 'miniproxy
             serve' for its spawns) brings the pool back to it.
  --memory MB  the members' memory (default 6; spawn takes a member only
             with the same --memory)
  status     one line: target=N memory=MB waiting=W starting=S crashed=C
             (crashed: members of no use, which the next fill destroys:
             crashed or stopped, e.g. handed a bad configuration by hand,
             or configured by a spawn that did not finish, its pool name
             kept: data/pool=taken, e.g. a killed 'miniproxy serve')
  drain      set the target to 0 and shut every member down
A spawn takes a waiting member when it is spawned --via xl without --mac and
--kernel, with the member's --memory, and its line has the member's
boot-time keys (rx_bufs, tx_bufs, offload: netfront is up before the
configuration arrives); otherwise, or with an empty pool, it creates a
domain as always (how=cold). --via libvirt is always cold. The
configuration goes to /local/domain/ID/miniproxy/config (written by dom0,
read-only for the guest: permissions n0 rID); it is the same line as
extra= and checked by the same parser, but it does not pass through Xen's
command line, so the 1022-byte limit does not apply (xenstore's 4 KiB does).
The member is renamed to the spawn's --name as xl rename does, in a
xenstore transaction with the checks. 'stop --all' and
'list' leave the pool alone: 'pool drain' empties it.
";

/// How long a refill a spawn started waits before it starts work.
const REFILL_DELAY: Duration = Duration::from_millis(500);

/// Names of pool members: `mp-pool-1`, `mp-pool-2`, ...
pub const PREFIX: &str = "mp-pool-";

/// The pool's own environment: its records in RUN_DIR/pool.
pub fn pool_env(env: &Env) -> Env {
    env.under(env.run_dir.join("pool"))
}

/// A pool member's command line for `memory` MB: `pool=on` and the
/// boot-time keys of that memory's default profile.
pub fn boot_line(memory: u32) -> String {
    let tokens: Vec<&str> = args::profile_tokens(memory)
        .split(' ')
        .filter(|t| {
            let key = t.split_once('=').map_or(*t, |(k, _)| k);
            proxy::config::BOOT_TIME_KEYS.contains(&key)
        })
        .collect();
    let mut line = String::from("pool=on");
    for t in tokens {
        line.push(' ');
        line.push_str(t);
    }
    line
}

/// One member as the selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub domid: u32,
    pub memory: u32,
    pub mac: String,
    /// Waiting, starting, crashed or an orphan (`recorded` does not look:
    /// starting there).
    pub condition: Condition,
}

/// What a member is, from its `xl list` state letters (empty when they
/// were not asked for) and its data/pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Its data/pool is `waiting` and it is neither crashed nor shut down.
    Waiting,
    /// Booting: no data/pool yet (or one this tool does not know).
    Starting,
    /// Crashed or stopped (a member that failed at boot, or was handed a
    /// bad configuration by hand): kept for a post-mortem until a fill or
    /// drain.
    Crashed,
    /// Configured by a spawn that did not finish: its data/pool says
    /// `taken` under its pool name (pool/orphan.rs). Of no use, as a
    /// crashed one; fill destroys it under the global lock.
    Orphan,
}

impl Member {
    pub fn is(&self, c: Condition) -> bool {
        self.condition == c
    }
}

/// Crashed or stopped comes first, whatever data/pool says: such a domain
/// serves no one, and fill destroys it as it always did.
fn condition(letters: &str, data_pool: Option<&str>) -> Condition {
    if letters.contains(['c', 's', 'd']) {
        Crashed
    } else if data_pool == Some("waiting") {
        Waiting
    } else if orphan::says_taken(data_pool) {
        Orphan
    } else {
        Starting
    }
}

/// `pool status`'s counts: (waiting, starting, crashed), where crashed
/// are the members of no use (crashed, stopped or orphans), which the next
/// fill destroys.
fn counts(m: &[Member]) -> (usize, usize, usize) {
    let waiting = m.iter().filter(|m| m.is(Waiting)).count();
    let no_use = m.iter().filter(|m| m.is(Crashed) || m.is(Orphan)).count();
    (waiting, m.len() - waiting - no_use, no_use)
}

/// Why a spawn cannot take a pool member at all (it goes cold); `None`:
/// it may, if a member matches.
pub fn cold_reason(s: &Spawn, via: Via) -> Option<&'static str> {
    if via != Via::Xl {
        Some("--via libvirt")
    } else if s.mac.is_some() {
        Some("--mac")
    } else if s.kernel.is_some() {
        Some("--kernel")
    } else {
        None
    }
}

/// Whether a spawn of `memory` MB with configuration `cfg` may take
/// member `m` if it waits: it has that memory and `cfg`'s boot-time keys
/// are the member's. A spawn takes the first waiting one that fits, in
/// name order ([`candidates`]).
pub fn fits(m: &Member, memory: u32, cfg: &Config) -> bool {
    m.memory == memory
        && Config::parse(&boot_line(m.memory))
            .is_ok_and(|boot| cfg.boot_time_mismatch(&boot).is_none())
}

/// The stored target: (N, memory).
fn read_target(pool: &Env) -> (usize, u32) {
    let text = std::fs::read_to_string(pool.path("target")).unwrap_or_default();
    parse_target(&text).unwrap_or((0, 6))
}

/// `N memory=MB` (the target file).
pub fn parse_target(text: &str) -> Option<(usize, u32)> {
    let mut it = text.split_whitespace();
    let n = it.next()?.parse().ok()?;
    let memory = it.next()?.strip_prefix("memory=")?.parse().ok()?;
    Some((n, memory))
}

fn write_target(pool: &Env, n: usize, memory: u32) -> Result<(), Failure> {
    std::fs::create_dir_all(&pool.run_dir)
        .or_else(|e| fail(format!("cannot create {}: {e}", pool.run_dir.display())))?;
    std::fs::write(pool.path("target"), format!("{n} memory={memory}\n"))
        .or_else(|e| fail(format!("cannot write the pool's target: {e}")))
}

/// The live members (records whose domain still has the member's name);
/// records of members that are gone are dropped. With `with_states`, one
/// `xl list` also tells which crashed; a spawn does without it (an `xl`
/// process costs a second in a busy dom0 under TCG; a crashed member it
/// took shows as a spawn that fails, and the next fill clears it).
pub fn members(pool: &Env, with_states: bool) -> Vec<Member> {
    let recs = records(pool);
    if recs.is_empty() {
        return Vec::new();
    }
    let ids: Vec<Option<u32>> = recs
        .iter()
        .map(|(name, _)| {
            std::fs::read_to_string(pool.path(&format!("{name}.domid")))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    // Every member's name and data/pool in one xenstore-read; one by one
    // when a node is missing (a member still booting, or gone).
    let paths: Vec<String> = ids
        .iter()
        .flatten()
        .flat_map(|id| {
            [
                format!("/local/domain/{id}/name"),
                format!("/local/domain/{id}/data/pool"),
            ]
        })
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let all = xen::read_all(&refs);
    let states = if with_states {
        xen::xl_list()
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    let mut k = 0;
    for ((name, meta), id) in recs.into_iter().zip(ids) {
        let looked_up = id.map(|id| {
            let (dom_name, state) = match &all {
                Some(v) => (Some(v[2 * k].clone()), Some(v[2 * k + 1].clone())),
                None => (
                    xen::read(&format!("/local/domain/{id}/name")),
                    xen::read(&format!("/local/domain/{id}/data/pool")),
                ),
            };
            k += 1;
            (id, dom_name, state)
        });
        let (domid, state) = match looked_up {
            Some((id, Some(n), state)) if n == name => (id, state),
            _ => {
                // What was read may be stale (a fill that was creating it
                // has finished since): look again holding its name lock,
                // which a creator holds until its domid is recorded.
                if let Ok(Some(_creating)) = lock::try_take(&pool.path(&format!("{name}.lock"))) {
                    if spawn::domain_of(pool, &name).is_none() {
                        forget(pool, &name);
                    }
                }
                continue;
            }
        };
        let field = |k: &str| render::meta_get(&meta, k).unwrap_or("").to_string();
        let letters = states
            .iter()
            .find(|(_, id, _)| *id == domid)
            .map_or("", |(_, _, l)| l.as_str());
        out.push(Member {
            name,
            domid,
            memory: field("memory").parse().unwrap_or(0),
            mac: field("mac"),
            condition: condition(letters, state.as_deref()),
        });
    }
    out
}

/// Every subcommand's flags: `--json`.
const FLAGS: &[Flag] = &[Flag::switch("--json")];
/// fill's: also `--refill` and `--memory MB` (no `--memory=MB`).
const FILL_FLAGS: &[Flag] = &[
    Flag::switch("--json"),
    Flag::switch("--refill"),
    Flag::value("--memory", "a value").separate(),
];

pub fn run(argv: &[String]) -> Outcome {
    let (sub, rest) = match argv.split_first() {
        None => return bad("which? fill N, status or drain"),
        Some((s, r)) => (s.as_str(), r),
    };
    let mut json = false;
    let mut refill = false;
    let mut memory: Option<u32> = None;
    let mut n: Option<usize> = None;
    let filling = sub == "fill";
    for arg in flags::parse(rest, if filling { FILL_FLAGS } else { FLAGS }, true) {
        match arg? {
            Arg::Help => return flags::help(USAGE),
            Arg::Switch("--json") => json = true,
            Arg::Switch(_) => refill = true, // fill's other one
            Arg::Value(_, mb) => memory = Some(args::parse_memory(mb)?),
            Arg::Word(v) if filling && n.is_none() => match v.parse::<usize>() {
                Ok(k) if k <= 1000 && !v.starts_with('+') => n = Some(k),
                _ => return bad(format!("bad pool size '{v}': expected 0..1000")),
            },
            Arg::Word(v) => return bad(format!("unexpected argument '{v}'")),
        }
    }
    match sub {
        "-h" | "--help" => flags::help(USAGE),
        "fill" => {
            if n.is_none() && !refill {
                return bad("fill needs the pool's size N");
            }
            if refill {
                // Before any other work: dom0 may have one vCPU, and the
                // caller of the spawn that started this gets it first (under
                // TCG even reading the environment costs ms, an xl create
                // seconds); the pool is back a moment later.
                std::thread::sleep(REFILL_DELAY);
            }
            env::need_root()?;
            fill(&Env::load(), n, memory, refill, json)
        }
        "status" => {
            env::need_root()?;
            let env = Env::load();
            let pool = pool_env(&env);
            let (target, memory) = read_target(&pool);
            print_status("pool", &members(&pool, true), target, memory, None, json);
            Ok(())
        }
        "drain" => {
            env::need_root()?;
            drain(json)
        }
        other => bad(format!(
            "unknown pool command '{other}' (fill, status, drain)"
        )),
    }
}

fn print_status(what: &str, m: &[Member], target: usize, memory: u32, ms: Option<u64>, json: bool) {
    let (waiting, starting, crashed) = counts(m);
    if json {
        let o = Object::default()
            .str("result", what)
            .num("target", target as u64)
            .num("memory", memory.into())
            .num("waiting", waiting as u64)
            .num("starting", starting as u64)
            .num("crashed", crashed as u64);
        let o = match ms {
            Some(ms) => o.num("ms", ms),
            None => o,
        };
        println!("{}", o.finish());
    } else {
        let ms = ms.map(|ms| format!(" ms={ms}")).unwrap_or_default();
        println!(
            "{what} target={target} memory={memory} waiting={waiting} starting={starting} crashed={crashed}{ms}"
        );
    }
}

/// A spawn-like description of a pool member, for the template.
fn member_spawn(name: &str, memory: u32) -> Spawn {
    Spawn {
        name: name.into(),
        mode: Mode::Reverse,
        listen: 0,
        upstream: None,
        ip: "-".into(),
        gw: None,
        memory,
        profile: args::profile_name(memory),
        mac: None,
        kernel: None,
        timeout_ms: 60_000,
        timeout_text: "60".into(),
        json: false,
        via: Some(Via::Xl),
        cfgline: boot_line(memory),
    }
}

/// Bring the pool up to N (or the stored target with `--refill`), then wait
/// until every member waits.
fn fill(env: &Env, n: Option<usize>, memory: Option<u32>, refill: bool, json: bool) -> Outcome {
    let pool = pool_env(env);
    std::fs::create_dir_all(&pool.run_dir)
        .or_else(|e| fail(format!("cannot create {}: {e}", pool.run_dir.display())))?;
    let (old_n, old_mem) = read_target(&pool);
    let memory = memory.unwrap_or(if refill { old_mem } else { 6 });
    if let Some(n) = n {
        write_target(&pool, n, memory)?;
    }
    // One fill at a time. A refill waits for a fill that runs, then counts
    // the members itself: the running one may already have counted them
    // before the spawn that started this refill took one.
    let _one = match take_fill_lock(&pool.path(".fill.lock")) {
        Ok(Some(f)) => f,
        _ => return fail("another pool fill held the pool for 600 s"),
    };
    let _ = old_n;
    let template_path = env
        .default_template()
        .ok_or(())
        .or_else(|_| fail("no template found: set MINIPROXY_TEMPLATE (xl-configs/template.cfg)"))?;
    let template = std::fs::read_to_string(&template_path)
        .or_else(|e| fail(format!("cannot read {}: {e}", template_path.display())))?;
    let kernel = env.default_kernel().ok_or(()).or_else(|_| {
        fail("no kernel found: set MINIPROXY_KERNEL (build it with cargo build --release -p kernel --bins)")
    })?;
    let kernel = std::path::absolute(&kernel)
        .unwrap_or(kernel)
        .display()
        .to_string();
    let mut failed = false;
    // Members that crashed or stopped are of no use: make room for new ones.
    let found = members(&pool, true);
    for m in found.iter().filter(|m| m.is(Crashed)) {
        eprintln!(
            "miniproxy pool: {} (domain {}) has crashed or stopped; destroying it",
            m.name, m.domid
        );
        spawn::destroy(&pool, &m.name, &m.domid.to_string());
        forget(&pool, &m.name);
    }
    // So are orphans of an interrupted hand-over, but only under the
    // global lock: an in-flight spawn's member looks the same for a moment.
    orphan::clear(env, &pool, &found);
    loop {
        // The target as it is now: a drain or a new fill may have changed it.
        let (target, mem_now) = read_target(&pool);
        // An orphan left (the global lock was busy) is replaced all the
        // same: no spawn will take it.
        let live = members(&pool, false)
            .iter()
            .filter(|m| !m.is(Orphan))
            .count();
        if live >= target || mem_now != memory {
            break;
        }
        if let Err(e) = create_member(env, &pool, &template, &template_path, &kernel, memory) {
            if let Failure::Fail(m) = &e {
                eprintln!("miniproxy pool: {m}");
            }
            failed = true;
            break;
        }
    }
    // Every member waiting, or 60 s. Orphans never will: one left above,
    // or a spawn's member in its hand-over, is not waited for.
    let t0 = env.ms();
    loop {
        let m: Vec<Member> = members(&pool, true)
            .into_iter()
            .filter(|m| !m.is(Orphan))
            .collect();
        if m.iter().all(|m| m.is(Waiting)) || env.ms() - t0 > 60_000 {
            break;
        }
        if let Some(s) = m.iter().find(|m| !m.is(Waiting)) {
            if s.is(Crashed) {
                eprintln!(
                    "miniproxy pool: {} (domain {}) crashed while booting; destroying it",
                    s.name, s.domid
                );
                spawn::destroy(&pool, &s.name, &s.domid.to_string());
                forget(&pool, &s.name);
                failed = true;
                continue;
            }
            xen::wait_event(
                &format!("/local/domain/{}/data/pool", s.domid),
                Duration::from_millis(1000),
            );
        }
    }
    let (target, memory) = read_target(&pool);
    if !refill {
        print_status(
            "pool",
            &members(&pool, true),
            target,
            memory,
            Some(env.ms()),
            json,
        );
    }
    if failed {
        Err(Failure::Reported("the pool could not be filled".into()))
    } else {
        Ok(())
    }
}

/// The pool's fill lock, for a fill or a refill alike: waited for, up to
/// FILL_LOCK_WAIT. (A refill that gave up when it found a fill running lost
/// members: that fill had counted them and was only waiting for its new
/// ones to boot when a spawn took one and started the refill.)
fn take_fill_lock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    lock::take_within(path, FILL_LOCK_WAIT)
}

/// How long a fill waits for another one to finish.
const FILL_LOCK_WAIT: Duration = Duration::from_secs(600);

/// The first free `mp-pool-K`, with a MAC no live instance or member has;
/// its config in place and xl create run (not waited for).
fn create_member(
    env: &Env,
    pool: &Env,
    template: &str,
    template_path: &std::path::Path,
    kernel: &str,
    memory: u32,
) -> Result<(), Failure> {
    let global = env.path(".lock");
    let name;
    // Held from before its record exists until its domid is recorded: a
    // concurrent `members` (status, a spawn) keeps a record without a domid
    // only while this lock says it is being created.
    let _creating;
    {
        let _g = match lock::take_within(&global, Duration::from_secs(60)) {
            Ok(Some(f)) => f,
            _ => return fail(format!("could not take {} within 60 s", global.display())),
        };
        let taken: Vec<String> = records(pool).into_iter().map(|(n, _)| n).collect();
        name = (1..)
            .map(|k| format!("{PREFIX}{k}"))
            .find(|n| !taken.contains(n) && xen::domid_of(n).is_none())
            .expect("an unbounded range has a free name");
        // Waited for, not tried: a `members` elsewhere holds it for a
        // moment when it asks whether it is held.
        _creating =
            match lock::take_within(&pool.path(&format!("{name}.lock")), Duration::from_secs(10)) {
                Ok(Some(f)) => f,
                _ => return fail(format!("could not lock {name}.lock")),
            };
        let in_use: Vec<String> = records(env)
            .into_iter()
            .chain(records(pool))
            .filter_map(|(_, m)| render::meta_get(&m, "mac").map(String::from))
            .collect();
        let mac = (0..16)
            .map(|salt| args::mac_of(&format!("{name}#pool{salt}")))
            .find(|m| !in_use.contains(m))
            .ok_or(())
            .or_else(|_| fail("no free MAC for a pool member"))?;
        let s = member_spawn(&name, memory);
        let v = Values {
            spawn: &s,
            kernel,
            bridge: &env.bridge,
            mac: &mac,
            vif_script: &env.vif_script,
        };
        let text = render::render(
            template,
            &template_path.display().to_string(),
            "pool fill",
            &v,
        )
        .or_else(fail)?;
        std::fs::write(pool.path(&format!("{name}.cfg")), text)
            .or_else(|e| fail(format!("cannot write {name}.cfg: {e}")))?;
    }
    let parallel = env::parallel()?;
    let _slot = spawn::take_slot(env, 0, parallel, Duration::from_secs(600));
    let id = spawn::create(pool, &name, Via::Xl, env.ms() + 60_000)?;
    let _ = std::fs::write(pool.path(&format!("{name}.domid")), format!("{id}\n"));
    Ok(())
}

/// Target 0, then every member shut down.
fn drain(json: bool) -> Outcome {
    let env = Env::load();
    let pool = pool_env(&env);
    let (_, memory) = read_target(&pool);
    if pool.run_dir.is_dir() {
        write_target(&pool, 0, memory)?;
    }
    // A running fill stops before its next member; wait for it.
    let _one = lock::take_within(&pool.path(".fill.lock"), Duration::from_secs(120));
    let m = members(&pool, true);
    let mut failed = false;
    for member in &m {
        if let Err(e) = crate::stop::stop_one(&pool, &member.name, Duration::from_secs(30)) {
            eprintln!("miniproxy pool: {e}");
            failed = true;
        }
    }
    let left = members(&pool, true);
    if json {
        let o = Object::default()
            .str("result", "drained")
            .num("stopped", (m.len() - left.len()) as u64)
            .num("left", left.len() as u64)
            .num("ms", env.ms());
        println!("{}", o.finish());
    } else {
        println!(
            "drained stopped={} left={} ms={}",
            m.len() - left.len(),
            left.len(),
            env.ms()
        );
    }
    if failed || !left.is_empty() {
        Err(Failure::Reported(format!("{} members left", left.len())))
    } else {
        Ok(())
    }
}

/// The members a spawn of `memory` MB with configuration `cfg` may take
/// ([`fits`]), in the order it tries them (name order), from their records
/// alone: whether each waits is for the caller to ask xenstore, one member
/// at a time, so that a spawn looks at the member it takes, not at all of
/// them. Records without a domid (a member being created) are left out.
pub fn candidates(env: &Env, memory: u32, cfg: &Config) -> Vec<Member> {
    recorded(env)
        .into_iter()
        .filter(|m| fits(m, memory, cfg))
        .collect()
}

/// Every member of the pool's records that has a domid, in name order,
/// whatever it fits: what the daemon's prepared hand-over reads ahead
/// (crate::warm::prepared), before it knows the spawn.
pub fn recorded(env: &Env) -> Vec<Member> {
    let pool = pool_env(env);
    records(&pool)
        .into_iter()
        .filter_map(|(name, meta)| {
            let field = |k: &str| render::meta_get(&meta, k).unwrap_or("").to_string();
            let domid = std::fs::read_to_string(pool.path(&format!("{name}.domid")))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(Member {
                name,
                domid,
                memory: field("memory").parse().unwrap_or(0),
                mac: field("mac"),
                condition: Starting,
            })
        })
        .collect()
}

/// Under the global lock (held by the caller): take `member` out of the
/// pool (its records go; the spawn writes its own under its name).
pub fn take(env: &Env, member: &Member) {
    forget(&pool_env(env), &member.name);
}

/// The refill of a spawn the daemon (crate::serve) served: `pool fill
/// --refill`'s work in a thread of the daemon, not a process (starting one
/// costs dom0 tens of ms under TCG). Like the process it waits
/// REFILL_DELAY, then for a fill that runs ([`take_fill_lock`]); what it
/// has to say goes to the daemon's stderr. `busy` is dropped when it ends.
/// `filling` runs just before the fill's work, `filled` after it (the
/// daemon's prepared hand-over is stale while a fill creates domains).
pub fn refill_in_thread(
    env: &Env,
    busy: impl Send + 'static,
    (filling, filled): (
        impl FnOnce() + Send + 'static,
        impl FnOnce() + Send + 'static,
    ),
) {
    let env = env.clone();
    let started = std::thread::Builder::new()
        .name("refill".into())
        .spawn(move || {
            let _busy = busy;
            std::thread::sleep(REFILL_DELAY);
            filling();
            let done = env::need_root().and_then(|()| fill(&env, None, None, true, false));
            filled();
            match done {
                Ok(()) => env.trace("refill done"),
                Err(Failure::Fail(m) | Failure::Bad(m)) => eprintln!("miniproxy pool: {m}"),
                Err(Failure::Reported(_)) => {}
            }
        });
    if let Err(e) = started {
        eprintln!("miniproxy serve: cannot start a refill thread: {e}");
    }
}

/// Start a detached `pool fill --refill` (the spawn does not wait for it);
/// its output goes to RUN_DIR/pool/refill.log.
pub fn refill_in_background(env: &Env) {
    let pool = pool_env(env);
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pool.path("refill.log"));
    // At the lowest CPU priority, with everything it runs (xl create, the
    // hotplug scripts): the instance just handed out and its first clients
    // come first. Under TCG an xl create keeps dom0's one vCPU busy for a
    // second or more, and at equal priority the first proxied byte of a
    // warm spawn waited for it. Without `nice` (coreutils) it runs as is.
    let mut cmd = match env::find_in_path("nice") {
        Some(nice) => {
            let mut c = std::process::Command::new(nice);
            c.args(["-n", "19"]).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    cmd.args(["pool", "fill", "--refill"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    match log {
        Ok(f) => cmd.stderr(f),
        Err(_) => cmd.stderr(std::process::Stdio::null()),
    };
    // Its own process group: a terminal's ^C to the spawn does not stop it.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let _ = cmd.spawn();
}

mod orphan;

#[cfg(test)]
mod tests;
