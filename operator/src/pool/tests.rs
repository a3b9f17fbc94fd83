use super::*;

fn member(name: &str, memory: u32, waiting: bool) -> Member {
    Member {
        name: name.into(),
        domid: 7,
        memory,
        mac: "00:16:3e:00:00:01".into(),
        condition: if waiting { Waiting } else { Starting },
    }
}

fn spawn_of(extra: &[&str]) -> Spawn {
    args::reverse_spawn("w1", "10.0.0.9/24", extra)
}

/// The member a spawn takes among `members` (their states known).
fn choose(members: &[Member], memory: u32, cfg: &Config) -> Option<usize> {
    members
        .iter()
        .position(|m| m.is(Waiting) && fits(m, memory, cfg))
}

fn cfg(s: &Spawn) -> Config {
    Config::parse(&s.cfgline).unwrap()
}

#[test]
fn a_members_line_is_pool_on_with_its_profiles_boot_time_keys() {
    assert_eq!(boot_line(4), "pool=on rx_bufs=32");
    assert_eq!(boot_line(6), "pool=on rx_bufs=64");
    assert_eq!(boot_line(64), "pool=on rx_bufs=64");
    // The guest's parser takes it.
    assert!(Config::parse(&boot_line(4)).unwrap().pool);
}

#[test]
fn the_first_waiting_member_with_the_same_memory_is_taken() {
    let s = spawn_of(&["--memory", "4"]);
    let m = [
        member("mp-pool-1", 6, true),
        member("mp-pool-2", 4, false),
        member("mp-pool-3", 4, true),
        member("mp-pool-4", 4, true),
    ];
    assert_eq!(choose(&m, 4, &cfg(&s)), Some(2));
    let s6 = spawn_of(&[]);
    assert_eq!(choose(&m, 6, &cfg(&s6)), Some(0));
    assert_eq!(choose(&m, 8, &cfg(&s6)), None);
    assert_eq!(choose(&m[1..2], 4, &cfg(&s)), None, "starting: not taken");
    assert_eq!(choose(&[], 4, &cfg(&s)), None);
}

#[test]
fn a_member_is_taken_only_with_its_boot_time_keys() {
    let m = [member("mp-pool-1", 4, true)];
    // The small profile's rx_bufs=32 is the member's: taken, whatever else
    // the line sets (mem=, buffers, rules).
    let s = spawn_of(&["--memory", "4", "--extra", "mem=2m buf=64k idle_exit=1m"]);
    assert_eq!(choose(&m, 4, &cfg(&s)), Some(0));
    for extra in ["rx_bufs=16", "tx_bufs=8", "offload=off"] {
        let s = spawn_of(&["--memory", "4", "--extra", extra]);
        assert_eq!(choose(&m, 4, &cfg(&s)), None, "{extra}");
    }
    // --profile default at 4 MB: rx_bufs=64, not the member's 32.
    let s = spawn_of(&["--memory", "4", "--profile", "default"]);
    assert_eq!(choose(&m, 4, &cfg(&s)), None);
}

#[test]
fn mac_kernel_and_libvirt_spawns_are_cold() {
    assert_eq!(cold_reason(&spawn_of(&[]), Via::Xl), None);
    assert_eq!(
        cold_reason(&spawn_of(&["--mac", "00:16:3e:aa:bb:cc"]), Via::Xl),
        Some("--mac")
    );
    assert_eq!(
        cold_reason(&spawn_of(&["--kernel", "/k"]), Via::Xl),
        Some("--kernel")
    );
    assert_eq!(
        cold_reason(&spawn_of(&[]), Via::Libvirt),
        Some("--via libvirt")
    );
}

#[test]
fn the_target_file() {
    assert_eq!(parse_target("3 memory=4\n"), Some((3, 4)));
    assert_eq!(parse_target("0 memory=6"), Some((0, 6)));
    assert_eq!(parse_target(""), None);
    assert_eq!(parse_target("3"), None);
    assert_eq!(parse_target("x memory=4"), None);
}

fn refused(argv: &[&str]) -> String {
    let a: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    match run(&a) {
        Err(Failure::Bad(m)) => m,
        other => panic!("{argv:?} not refused: {other:?}"),
    }
}

#[test]
fn bad_pool_invocations_are_refused_before_anything_runs() {
    assert_eq!(refused(&[]), "which? fill N, status or drain");
    assert_eq!(refused(&["fill"]), "fill needs the pool's size N");
    assert_eq!(
        refused(&["fill", "x"]),
        "bad pool size 'x': expected 0..1000"
    );
    assert_eq!(
        refused(&["fill", "1001"]),
        "bad pool size '1001': expected 0..1000"
    );
    assert_eq!(
        refused(&["fill", "3", "--memory", "2"]),
        "memory 2 MB is below 4 MB, the smallest PV guest xl builds"
    );
    assert_eq!(refused(&["fill", "3", "4"]), "unexpected argument '4'");
    assert_eq!(
        refused(&["status", "--memory", "4"]),
        "unknown option '--memory'"
    );
    assert_eq!(refused(&["drain", "3"]), "unexpected argument '3'");
    assert_eq!(
        refused(&["empty"]),
        "unknown pool command 'empty' (fill, status, drain)"
    );
}

/// A spawn's candidates come from the records alone, in name order, only
/// those that fit and have a domid (one being created has none yet).
#[test]
fn a_spawns_candidates_are_the_fitting_records_with_a_domid_in_name_order() {
    let dir = std::env::temp_dir().join(format!("mp-candidates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let env = Env::load().under(dir.clone());
    let pool = pool_env(&env);
    std::fs::create_dir_all(&pool.run_dir).unwrap();
    for (name, memory, domid) in [
        ("mp-pool-1", 6, Some(11)),
        ("mp-pool-2", 4, None),
        ("mp-pool-3", 4, Some(13)),
        ("mp-pool-10", 4, Some(20)),
    ] {
        let cfg = format!(
            "# Miniproxy instance (rendered)\n# miniproxy: name={name} memory={memory} mac=00:16:3e:00:00:{domid:02}\n",
            domid = domid.unwrap_or(0)
        );
        std::fs::write(pool.path(&format!("{name}.cfg")), cfg).unwrap();
        if let Some(id) = domid {
            std::fs::write(pool.path(&format!("{name}.domid")), format!("{id}\n")).unwrap();
        }
    }
    let s = spawn_of(&["--memory", "4"]);
    let c = candidates(&env, 4, &cfg(&s));
    let got: Vec<(&str, u32, &str)> = c
        .iter()
        .map(|m| (m.name.as_str(), m.domid, m.mac.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("mp-pool-10", 20, "00:16:3e:00:00:20"),
            ("mp-pool-3", 13, "00:16:3e:00:00:13")
        ]
    );
    assert!(c.iter().all(|m| m.memory == 4 && !m.is(Waiting)));
    let s6 = spawn_of(&[]);
    assert_eq!(candidates(&env, 6, &cfg(&s6)).len(), 1);
    let other = spawn_of(&["--memory", "4", "--extra", "rx_bufs=16"]);
    assert!(candidates(&env, 4, &cfg(&other)).is_empty());
    take(&env, &c[0]);
    assert!(!pool.path("mp-pool-10.cfg").exists() && !pool.path("mp-pool-10.domid").exists());
    assert_eq!(candidates(&env, 4, &cfg(&s))[0].name, "mp-pool-3");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refill_waits_for_a_running_fill_instead_of_leaving() {
    let dir = std::env::temp_dir().join(format!("mp-fill-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(".fill.lock");
    let running = crate::lock::try_take(&path)
        .unwrap()
        .expect("the first fill");
    let t0 = std::time::Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(running);
    });
    let got = take_fill_lock(&path).unwrap();
    assert!(
        got.is_some(),
        "the refill must get the lock once the fill ends"
    );
    assert!(t0.elapsed() >= std::time::Duration::from_millis(250));
    release.join().unwrap();
    drop(got);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A member whose data/pool says `taken` under its pool name was
/// configured by a spawn that did not finish: of no use, not starting.
#[test]
fn a_member_that_says_taken_under_its_pool_name_is_an_orphan() {
    use Condition::*;
    assert_eq!(condition("-b----", Some("taken us=5")), Orphan);
    assert_eq!(condition("", Some("taken us=5")), Orphan, "without xl list");
    assert_eq!(condition("r-----", Some("taken")), Orphan);
    assert_eq!(condition("-b----", Some("waiting")), Waiting);
    assert_eq!(condition("-b----", None), Starting);
    assert_eq!(condition("", Some("")), Starting);
    assert_eq!(condition("-b----", Some("takenover")), Starting);
    // Crashed or stopped wins: the crashed path destroys it.
    assert_eq!(condition("---sc-", Some("taken us=5")), Crashed);
    assert_eq!(condition("----c-", Some("waiting")), Crashed);
    assert_eq!(condition("-b---d", None), Crashed);
}

#[test]
fn status_counts_orphans_with_the_crashed_not_as_starting() {
    let mut orphan = member("mp-pool-2", 4, false);
    orphan.condition = Orphan;
    let mut crashed = member("mp-pool-3", 4, false);
    crashed.condition = Crashed;
    let m = [
        member("mp-pool-1", 4, true),
        orphan.clone(),
        crashed,
        member("mp-pool-4", 4, false),
    ];
    assert_eq!(counts(&m), (1, 1, 2));
    assert_eq!(counts(&[orphan]), (0, 0, 1));
    assert_eq!(counts(&[]), (0, 0, 0));
}
