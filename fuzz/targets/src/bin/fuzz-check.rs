//! Runs the fuzz targets without AFL: every file of each target's corpus,
//! then fresh inputs from a seeded PRNG (random bytes, and corpus files with
//! random bytes changed, cut or appended). Prints `fuzz: N passed, M
//! failed` (and, on stderr, a line per target with `-v` or when it failed);
//! exits non-zero on any failure, leaving each failing input in the output
//! folder for `fuzz-check --replay`.
//!
//! Usage: fuzz-check [-v] [--corpus DIR] [--out DIR] [--seed S] [--scale F]
//!                   [--target NAME]... | --replay TARGET FILE...

use std::panic;
use std::path::{Path, PathBuf};
use std::time::Instant;

use miniproxy_fuzz_targets::{target, Target, TARGETS};

/// The project's one PRNG (crate `rng/`), deterministic per seed, with the
/// index-sized draws the check uses.
struct Rng(miniproxy_rng::Rng);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n.max(1) as u64) as usize
    }
}

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Run one input; the panic message if the target failed.
fn try_one(t: &Target, data: &[u8]) -> Option<String> {
    let r = panic::catch_unwind(|| (t.run)(data));
    r.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

fn mutate(rng: &mut Rng, base: &[u8], max_len: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            _ => {
                for _ in 0..rng.below(16) {
                    v.push(rng.next() as u8);
                }
            }
        }
    }
    v.truncate(max_len);
    v
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut corpus = here.join("corpus");
    let mut out = here.join("../build/fuzz/check-failures");
    let mut seed = 1u64;
    let mut scale = 1.0f64;
    let mut only: Vec<String> = Vec::new();
    let mut verbose = false;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "-v" || args[i] == "--verbose" {
            verbose = true;
            i += 1;
            continue;
        }
        let val = |i: usize| {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| panic!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "--corpus" => corpus = PathBuf::from(val(i)),
            "--out" => out = PathBuf::from(val(i)),
            "--seed" => seed = val(i).parse().expect("--seed N"),
            "--scale" => scale = val(i).parse().expect("--scale F"),
            "--target" => only.push(val(i)),
            "--replay" => {
                let t = target(&val(i)).expect("unknown target");
                let mut failed = 0;
                for f in &args[i + 2..] {
                    let data = std::fs::read(f).expect("read input");
                    match try_one(t, &data) {
                        None => println!("{f}: ok"),
                        Some(m) => {
                            failed += 1;
                            println!("{f}: FAILED: {m}");
                        }
                    }
                }
                std::process::exit(i32::from(failed > 0));
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    // Failures are counted and reported below; keep the default hook's
    // message for the first of each target only.
    let quiet = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let q = quiet.clone();
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !q.load(std::sync::atomic::Ordering::Relaxed) {
            default_hook(info);
        }
    }));

    let (mut passed, mut failed) = (0u64, 0u64);
    for t in TARGETS {
        if !only.is_empty() && !only.iter().any(|o| o == t.name) {
            continue;
        }
        let t0 = Instant::now();
        let files = corpus_files(&corpus.join(t.name));
        let seeds: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).expect("read corpus file"))
            .collect();
        let mut rng = Rng(miniproxy_rng::Rng::new(
            seed ^ t
                .name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
        ));
        let fresh = (f64::from(t.check_inputs) * scale) as usize;
        let (mut ok, mut bad) = (0u64, 0u64);
        for n in 0..seeds.len() + fresh {
            let data = if n < seeds.len() {
                seeds[n].clone()
            } else if !seeds.is_empty() && rng.below(2) == 0 {
                let base = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, base, t.max_len)
            } else {
                let len = rng.below(t.max_len + 1);
                (0..len).map(|_| rng.next() as u8).collect()
            };
            quiet.store(bad > 0, std::sync::atomic::Ordering::Relaxed);
            match try_one(t, &data) {
                None => ok += 1,
                Some(msg) => {
                    bad += 1;
                    let _ = std::fs::create_dir_all(&out);
                    let name = format!(
                        "{}-{:016x}",
                        t.name,
                        data.iter()
                            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b))
                                .wrapping_mul(0x100_0000_01b3))
                    );
                    let path = out.join(&name);
                    let _ = std::fs::write(&path, &data);
                    if bad <= 3 {
                        eprintln!(
                            "fuzz: {} FAILED on {} ({}): {msg}",
                            t.name,
                            path.display(),
                            if n < seeds.len() {
                                files[n].display().to_string()
                            } else {
                                format!("fresh input {n}")
                            }
                        );
                    }
                }
            }
        }
        if verbose || bad > 0 {
            eprintln!(
                "fuzz {:<12} {} corpus files + {} fresh inputs: {} passed, {} failed ({:.1} s)",
                t.name,
                seeds.len(),
                fresh,
                ok,
                bad,
                t0.elapsed().as_secs_f64()
            );
        }
        passed += ok;
        failed += bad;
    }
    println!("fuzz: {passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}
