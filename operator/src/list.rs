//! `miniproxy list`: one line per instance, with its parsed stats.

use crate::args::check_name;
use crate::env::{self, Env};
use crate::json::Object;
use crate::render::meta_get;
use crate::spawn::{domain_of, forget, records, spawning, via_of};
use crate::stats::Counters;
use crate::{bad, lock, xen, Failure, Outcome};
use std::time::Duration;

pub const USAGE: &str = "Usage: miniproxy list [--json] [NAME...]
One line per instance started by 'miniproxy spawn' that still exists (all, or
the NAMEs given), sorted by name:
  name=NAME domid=ID state=STATE ip=CIDR mode=MODE memory=MB stats: COUNTERS
STATE: running (includes idle: blocked in Xen), starting (no ready key yet),
draining (stopping: new connections refused, open ones finishing), paused,
shutdown, crashed, dying. COUNTERS: the guest's data/stats (refreshed
at most once a second; format in README.md, \"The stats line\"), e.g.
px_accepted=3 px_active=1 ... nf_rx_frames=.. cpu_busy_ms=..; `none` when
there are none yet, `malformed` (and a warning) when they do not parse.
--json: one object per line, the counters as an object (null if none).
Instances created either way (spawn --via xl or libvirt) are listed alike.
Records of instances that are gone (idle_exit, xl destroy) are dropped.
A NAME that is not a running instance is an error (exit 1) after the others.
";

/// What `list` (and `metrics`) says about one instance.
pub struct Row {
    pub name: String,
    pub domid: Option<u32>,
    pub state: String,
    pub ip: String,
    pub mode: String,
    pub memory: String,
    pub stats: Option<Counters>,
    /// The stats key was there but did not parse: why.
    pub malformed: Option<String>,
}

impl Row {
    fn text(&self) -> String {
        let stats = match (&self.stats, &self.malformed) {
            (Some(c), _) => c.to_string(),
            (None, Some(_)) => "malformed".into(),
            (None, None) => "none".into(),
        };
        let domid = self.domid.map_or("-".into(), |d| d.to_string());
        format!(
            "name={} domid={domid} state={} ip={} mode={} memory={} stats: {stats}",
            self.name, self.state, self.ip, self.mode, self.memory
        )
    }

    fn json(&self) -> String {
        let o = Object::default()
            .str("name", &self.name)
            .opt_num("domid", self.domid.map(u64::from))
            .str("state", &self.state)
            .str("ip", &self.ip)
            .str("mode", &self.mode)
            .opt_num("memory", self.memory.parse().ok());
        match &self.stats {
            Some(c) => o.object("stats", c.to_json()),
            None => o.null("stats"),
        }
        .finish()
    }
}

/// What `xl list`'s state letters (r b p s c d, `-` where one is off) say.
/// All dashes is a domain that is runnable but was waiting for a CPU at that
/// instant: running, for the operator (with 20 guests on TCG's few vCPUs,
/// one in twenty `list`s caught a guest so).
fn state_name(letters: &str) -> &'static str {
    if letters.contains('c') {
        "crashed"
    } else if letters.contains('s') {
        "shutdown"
    } else if letters.contains('d') {
        "dying"
    } else if letters.contains('p') {
        "paused"
    } else if letters.contains(['r', 'b'])
        || (!letters.is_empty() && letters.chars().all(|c| c == '-'))
    {
        "running"
    } else {
        "unknown"
    }
}

/// The keys of a guest's that `list` reads, in this order ([`Guest`]).
const GUEST_KEYS: [&str; 4] = ["data/ready", "data/ip", "data/stats", "data/draining"];

/// What a live instance's guest says in xenstore.
#[derive(Debug, Default, PartialEq, Eq)]
struct Guest {
    /// It serves (data/ready).
    ready: bool,
    ip: Option<String>,
    /// Its stats line, unparsed.
    stats: Option<String>,
    /// It is stopping (data/draining): listeners closed, its connections
    /// finishing.
    draining: bool,
}

impl Guest {
    /// Domain `id`'s keys, all asked in one call of `read_each`
    /// ([`xen::read_each`]: one round trip to xenstored, whichever keys
    /// are missing), so a draining instance costs no more than another.
    fn read(id: u32, read_each: impl FnOnce(&[&str]) -> Vec<Option<String>>) -> Guest {
        let paths = GUEST_KEYS.map(|k| format!("/local/domain/{id}/{k}"));
        let mut values = read_each(&paths.each_ref().map(String::as_str)).into_iter();
        let mut next = || values.next().flatten();
        Guest {
            ready: next().is_some(),
            ip: next(),
            stats: next(),
            draining: next().is_some(),
        }
    }
}

/// A live instance's state: its domain's (`xl list` letters), where a
/// running guest that is not ready yet is starting and one that drains is
/// draining.
fn live_state(letters: &str, guest: &Guest) -> String {
    match state_name(letters) {
        "running" if !guest.ready => "starting",
        "running" if guest.draining => "draining",
        other => other,
    }
    .to_string()
}

pub fn run(argv: &[String]) -> Outcome {
    let mut names: Vec<String> = Vec::new();
    let mut json = false;
    for a in argv {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--json" => json = true,
            o if o.starts_with('-') => return bad(format!("unknown option '{o}'")),
            n => {
                check_name(n)?;
                names.push(n.to_string());
            }
        }
    }
    let explicit = !names.is_empty();
    env::need_root()?;
    let env = Env::load();
    let (rows, failed) = rows(&env, names, explicit, "list");
    for row in &rows {
        println!("{}", if json { row.json() } else { row.text() });
    }
    if failed {
        Err(Failure::Reported(
            "some instances could not be listed".into(),
        ))
    } else {
        Ok(())
    }
}

/// The instances NAMES (all recorded ones unless `explicit`), sorted by name
/// as the records are; records of instances that are gone are dropped. Warnings
/// go to stderr as `miniproxy CMD: ...`; `true` with the rows when an explicit
/// NAME is not an instance.
pub fn rows(env: &Env, mut names: Vec<String>, explicit: bool, cmd: &str) -> (Vec<Row>, bool) {
    let records = records(env);
    if !explicit {
        names = records.iter().map(|(n, _)| n.clone()).collect();
    }
    let mut out = Vec::new();
    if names.is_empty() {
        return (out, false);
    }
    // Every domain's name and state from one xl list.
    let domains = xen::xl_list();
    let mut failed = false;
    for n in &names {
        let meta = records
            .iter()
            .find(|(r, _)| r == n)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let field = |k: &str| meta_get(&meta, k).unwrap_or("").to_string();
        let id: Option<u32> = std::fs::read_to_string(env.path(&format!("{n}.domid")))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let live = id.and_then(|id| domains.iter().find(|(dn, did, _)| *did == id && dn == n));
        let has_record = via_of(env, n).is_some();
        let Some((_, id, letters)) = live else {
            if has_record && spawning(env, n) {
                let row = Row {
                    name: n.clone(),
                    domid: id,
                    state: "starting".into(),
                    ip: field("ip"),
                    mode: field("mode"),
                    memory: field("memory"),
                    stats: None,
                    malformed: None,
                };
                out.push(row);
                continue;
            }
            // Gone (idle_exit, xl destroy...): drop the record, unless a
            // spawn of the name started meanwhile.
            if has_record {
                if let Ok(Some(_g)) = lock::take_within(&env.path(".lock"), Duration::from_secs(10))
                {
                    if !spawning(env, n) && domain_of(env, n).is_none() {
                        forget(env, n);
                    }
                }
            }
            if explicit {
                eprintln!("miniproxy {cmd}: no instance named '{n}'");
                failed = true;
            }
            continue;
        };
        let guest = Guest::read(*id, xen::read_each);
        let state = live_state(letters, &guest);
        let ip = guest.ip.unwrap_or_else(|| field("ip"));
        let (stats, malformed) = match guest.stats.as_deref().map(Counters::parse) {
            Some(Ok(c)) => (Some(c), None),
            Some(Err(why)) => {
                eprintln!("miniproxy {cmd}: {n}: data/stats does not parse: {why}");
                (None, Some(why))
            }
            None => (None, None),
        };
        let row = Row {
            name: n.clone(),
            domid: Some(*id),
            state,
            ip,
            mode: field("mode"),
            memory: field("memory"),
            stats,
            malformed,
        };
        out.push(row);
    }
    (out, failed)
}

#[cfg(test)]
mod tests {
    use super::{live_state, state_name, Guest};
    use crate::xenstore::{fake, NO_TX};

    fn guest(ip: &str, stats: Option<&str>, draining: bool) -> Guest {
        Guest {
            ready: true,
            ip: Some(ip.into()),
            stats: stats.map(String::from),
            draining,
        }
    }

    /// Domains 1..=3 as a fake xenstored serves them, ready (1 without
    /// stats), those in `draining` draining: what `list` reads of each, the
    /// requests and the round trips it took.
    fn listed(draining: &[u32]) -> (Vec<Guest>, usize, u32) {
        let mut nodes = vec![
            ("/local/domain/1/data/ready", "1"),
            ("/local/domain/1/data/ip", "10.0.0.1/24"),
            ("/local/domain/2/data/ready", "1"),
            ("/local/domain/2/data/ip", "10.0.0.2/24"),
            ("/local/domain/2/data/stats", "px_accepted=2"),
            ("/local/domain/3/data/ready", "1"),
            ("/local/domain/3/data/ip", "10.0.0.3/24"),
            ("/local/domain/3/data/stats", "px_accepted=3"),
        ];
        let keys: Vec<String> = draining
            .iter()
            .map(|id| format!("/local/domain/{id}/data/draining"))
            .collect();
        nodes.extend(keys.iter().map(|k| (k.as_str(), "10000")));
        let (mut xs, h) = fake::serve(fake::State::with(&nodes));
        let guests = (1..=3)
            .map(|id| Guest::read(id, |p| xs.read_many(NO_TX, p).unwrap()))
            .collect();
        drop(xs);
        let st = h.join().unwrap();
        (guests, st.log.len(), st.rounds)
    }

    #[test]
    fn each_guest_costs_one_round_trip_however_many_drain() {
        for draining in [&[][..], &[2], &[1, 2, 3]] {
            let (guests, requests, round_trips) = listed(draining);
            let want: Vec<Guest> = [
                guest("10.0.0.1/24", None, false),
                guest("10.0.0.2/24", Some("px_accepted=2"), false),
                guest("10.0.0.3/24", Some("px_accepted=3"), false),
            ]
            .into_iter()
            .zip(1..)
            .map(|(g, id)| Guest {
                draining: draining.contains(&id),
                ..g
            })
            .collect();
            assert_eq!(guests, want, "draining {draining:?}");
            assert_eq!((requests, round_trips), (12, 3), "draining {draining:?}");
        }
    }

    /// The fake's count is of round trips, not requests: the same keys
    /// read one by one take one each.
    #[test]
    fn reading_the_keys_one_by_one_counts_a_round_trip_each() {
        let (mut xs, h) = fake::serve(fake::State::with(&[("/local/domain/1/data/ready", "1")]));
        let g = Guest::read(1, |p| {
            p.iter().map(|p| xs.read(NO_TX, p).unwrap()).collect()
        });
        drop(xs);
        assert_eq!(
            g,
            Guest {
                ready: true,
                ..Guest::default()
            }
        );
        assert_eq!(h.join().unwrap().rounds, 4);
    }

    #[test]
    fn a_running_guest_is_starting_until_ready_and_draining_once_it_says_so() {
        let ready = guest("10.0.0.1/24", None, false);
        let draining = guest("10.0.0.1/24", None, true);
        assert_eq!(live_state("-b----", &ready), "running");
        assert_eq!(live_state("-b----", &draining), "draining");
        // Not ready yet: starting, whatever else it says.
        assert_eq!(live_state("r-----", &Guest::default()), "starting");
        let early = Guest {
            draining: true,
            ..Guest::default()
        };
        assert_eq!(live_state("r-----", &early), "starting");
        // A domain that is not running keeps its own state.
        assert_eq!(live_state("--p---", &draining), "paused");
        assert_eq!(live_state("---sc-", &Guest::default()), "crashed");
    }

    #[test]
    fn state_letters_name_the_state_and_a_runnable_domain_is_running() {
        assert_eq!(state_name("r-----"), "running");
        assert_eq!(state_name("-b----"), "running");
        // Runnable, waiting for a CPU: xl prints no letter at all.
        assert_eq!(state_name("------"), "running");
        assert_eq!(state_name("--p---"), "paused");
        assert_eq!(state_name("---s--"), "shutdown");
        assert_eq!(state_name("---sc-"), "crashed");
        assert_eq!(state_name("-----d"), "dying");
        assert_eq!(state_name(""), "unknown");
        assert_eq!(state_name("?"), "unknown");
    }
}
