//! The benchmarks' JSON files against their schema, scripts/bench.schema.json
//! (fields described in scripts/BENCH.md). Here, beside the other tests of
//! the repository's scripts, because it needs no Xen: `scripts/bench` reports
//! on a console log it is given (BENCH_REPORT_ONLY) and
//! `scripts/bench-accel-report` on a TSV of transfers, so both real writers
//! run on small made-up inputs. The check is Python's `jsonschema` (Debian:
//! python3-jsonschema); without it the test says so and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Validates each file, then mutations of it that the schema must refuse.
const CHECK: &str = r#"
import copy, json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
def errors(d): return [e.message for e in v.iter_errors(d)]
for f in sys.argv[2:]:
    d = json.load(open(f))
    e = errors(d)
    print(("INVALID %s %s" % (f, e[:3])) if e else "VALID")
    muts = []
    def mut(name, fn):
        m = copy.deepcopy(d); fn(m); muts.append((name, m))
    if "final" in d:
        mut("no final", lambda m: m.pop("final"))
        mut("a ratio as a string", lambda m: m["summary"][0].update(ratio="1.0"))
        mut("inst without ready_ms", lambda m: m["measurements"][0].pop("ready_ms"))
        mut("unknown test", lambda m: m["measurements"][0].update(test="fast"))
    else:
        mut("accel ratio as a number", lambda m: m["accel"].update(r25_1m=0.7))
        mut("bad run status", lambda m: m["runs"][0].update(status="slow"))
        mut("median as a string", lambda m: m["summary"][0].update(median_s="7"))
        mut("an unknown field", lambda m: m.update(extra=1))
    for name, m in muts:
        print(("REFUSED " if errors(m) else "ACCEPTED ") + name)
"#;

/// The first Python that can import jsonschema: `python3` on PATH (which may
/// be a pyenv or venv one), else Debian's own, where `apt-get install
/// python3-jsonschema` (what scripts/test does) puts it.
fn python_with_jsonschema() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import jsonschema"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn check(files: &[&Path]) -> String {
    let schema = repo().join("scripts/bench.schema.json");
    let py = python_with_jsonschema().expect("checked by the caller");
    let mut c = Command::new(py);
    c.args(["-c", CHECK]).arg(&schema).args(files);
    let o = c.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("miniproxy-bj-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("scripts")).unwrap();
    d
}

/// A console log as scripts/dom0/bench.sh writes it (timestamps, BENCHINFO,
/// BENCH, BENCHERR, BENCHSTAT lines), with one measurement not taken ("-").
const LOG: &str = "\
[   1.0] testbed: accel=tcg (kvm cannot run Xen)
[   2.0] BENCHINFO accel=tcg phases=\"inst mem perf accel\" inst_reps=1 perf_reps=1 accel_reps=1 dur_s=2
[   2.1] BENCHINFO xen=4.17.3 dom0_kernel=6.1.0-28-amd64
[   2.2] BENCHINFO mp_extra=\"max_conns=128 rx_bufs=64\"
[   2.3] BENCHINFO lx_extra=\"max_conns=128 buf=16k\"
[   2.4] BENCHINFO inst_mem mp_mem=4 lx_mem=48 floor_mem=4
[   3.0] BENCH test=inst target=mp rep=1 mem=4 create_ms=300 ready_ms=450 byte_ms=600 guest_us=12000 destroy_ms=100
[   3.1] BENCH test=inst target=lx rep=1 mem=48 create_ms=900 ready_ms=4500 byte_ms=4700 guest_us=3000000 destroy_ms=400
[   3.2] BENCH test=inst target=floor rep=1 mem=4 create_ms=280 ready_ms=400 byte_ms=- guest_us=900 destroy_ms=90
[   3.3] BENCH test=mem target=mp mb=4 result=pass ok=100 ready_ms=500
[   3.4] BENCH test=memmin target=mp mb=4
[   3.5] BENCH test=memmin target=lx mb=48
[   3.6] BENCH test=conn target=direct rep=1 c=1 rate=900.5 connect=0 read=0 write=0 timeout=0
[   3.7] BENCH test=conn target=mp rep=1 c=1 rate=400.25 connect=0 read=0 write=0 timeout=0
[   3.8] BENCH test=conn target=lx rep=1 c=1 rate=350 connect=0 read=0 write=0 timeout=0
[   3.9] BENCH test=lat target=mp rep=1 p50_us=900 p99_us=2100 rr_rate=1000
[   4.0] BENCH test=tput target=mp rep=1 flows=1 dir=up mbps=800 sender_retr=3
[   4.1] BENCH test=tput target=lx rep=1 flows=1 dir=up mbps=700 sender_retr=-
[   4.2] BENCH test=accel target=mp split=25+25 size=102400 rep=1 ms=320
[   4.25] BENCH test=scale_spawn target=mp spawns_per_s=0.85 n=100 wall_ms=117647 parallel=4 ready_ms_median=4200
[   4.26] BENCH test=scale_idle target=mp n=100 secs=30.0 xenstored_cpu_ms=10 xenstored_requests=0 xenstored_req_per_s=0.00 guest_writes=0 all_writes=0
[   4.3] BENCHERR lat lx: wrk said \"no\"
[   4.4] BENCHSTAT target=mp label=final px_accepted=5
";

#[test]
fn bench_and_accel_json_match_the_schema() {
    if python_with_jsonschema().is_none() {
        println!("SKIP bench JSON schema check: python3's jsonschema is not installed (apt-get install python3-jsonschema)");
        return;
    }
    // scripts/bench, run from a copy so that its results/ is ours.
    let b = tmp("bench");
    std::fs::copy(repo().join("scripts/bench"), b.join("scripts/bench")).unwrap();
    std::fs::copy(repo().join("Cargo.lock"), b.join("Cargo.lock")).unwrap();
    std::fs::write(b.join("in.log"), LOG).unwrap();
    let o = Command::new("bash")
        .arg(b.join("scripts/bench"))
        .env("BENCH_REPORT_ONLY", b.join("in.log"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("bench: conn_ratio=1.14 tput_ratio=1.14 ready_ratio=10.00 mem_mb=4 linux_mem_mb=48 accel=tcg"),
        "{out}"
    );
    let bench_json = std::fs::read_dir(b.join("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("no results/bench-*.json");

    // scripts/bench-accel-report on a TSV with a finished, a timed-out and a failed transfer.
    let a = tmp("accel");
    let tsv = a.join("accel-1.tsv");
    let mut rows = String::from("cond\tlegs\tloss\ttarget\tsize\trep\tstatus\tsecs\tretrans_cl\tretrans_px\tretrans_sv\tlink_drops\tdetail\n");
    for (t, rep, status, secs) in [
        ("e2e", 1, "ok", "0.300"),
        ("e2e", 2, "ok", "0.320"),
        ("miniproxy", 1, "ok", "0.210"),
        ("miniproxy", 2, "timeout", ""),
        ("haproxy", 1, "fail", ""),
    ] {
        let detail = if status == "ok" { "" } else { "timed out" };
        rows += &format!("1\t25+25\t0\t{t}\t1m\t{rep}\t{status}\t{secs}\t0\t1\t0\t0\t{detail}\n");
    }
    std::fs::write(&tsv, rows).unwrap();
    std::fs::write(a.join("accel-1.meta"), "reps=2\nsizes=1m\ncommit=abc\n").unwrap();
    let o = Command::new("python3")
        .arg(repo().join("scripts/bench-accel-report"))
        .arg(&tsv)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("accel: r25_100k=n/a r25_1m=mp_timeout "),
        "{out}"
    );

    let text = check(&[&bench_json, &a.join("accel-1.json")]);
    assert_eq!(text.matches("VALID\n").count(), 2, "{text}");
    assert_eq!(text.matches("REFUSED ").count(), 8, "{text}");
    assert!(
        !text.contains("ACCEPTED") && !text.contains("INVALID"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&b);
    let _ = std::fs::remove_dir_all(&a);
}
