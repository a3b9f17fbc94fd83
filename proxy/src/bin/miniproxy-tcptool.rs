//! `miniproxy-tcptool`: a Linux TCP client and server for testing and
//! benchmarking `miniproxy-tap` (and other proxies) with real kernel TCP.
//! Every byte is checked against a seeded pattern.
//!
//! ```text
//! miniproxy-tcptool serve [ADDR:]PORT
//! miniproxy-tcptool client ADDR:PORT --op echo|get|put|who [--len N] [--seed S]
//!                   [--conns N] [--parallel P] [--expect reset|ADDR]
//! miniproxy-tcptool delayline TAP_A TAP_B MILLISECONDS
//! miniproxy-tcptool flood IFACE DST_MAC DST_IP:PORT [--syn-rate N] [--junk-rate N] [--secs S] [--src A.B.C.FIRST-LAST]
//! ```
//!
//! `flood` sends a spoofed SYN flood and junk frames raw on an interface
//! (`tcptool/flood.rs`).
//!
//! `delayline` joins two TAP devices and delays every frame by the given time in
//! each direction (a WAN emulator for kernels without `netem`).
//!
//! Protocol: the client sends one header line, then data.
//! * `echo` — the server echoes everything after the header, then closes.
//! * `get LEN SEED` — the server sends `LEN` pattern bytes and closes.
//! * `put LEN SEED` — the client sends `LEN` pattern bytes and closes its side;
//!   the server checks them and answers `ok LEN` or `bad OFFSET`.
//! * `who` — the server answers with the local address the client reached.
//!
//! The client prints one line `ok conns=.. bytes_up=.. bytes_down=.. secs=..
//! last_byte_secs=.. conns_per_s=.. mbytes_per_s=..` and exits 0, or prints what
//! failed and exits 1. `secs` runs to the end of the last exchange (its end of
//! stream); `last_byte_secs` to the arrival of the last expected byte (echo,
//! get; for put and who it is `secs`).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hostnet::wait_until_up;
use proxy::config::parse_size;
use proxy::sim::{pattern_rng, Rng};

#[path = "tcptool/flood.rs"]
mod flood;

const BLOCK: usize = 64 * 1024;

/// The same bytes as `proxy::sim::pattern(seed, len)`, produced block by block.
struct Pattern {
    rng: Rng,
    left: usize,
}

impl Pattern {
    fn new(seed: u64, len: usize) -> Pattern {
        Pattern {
            rng: pattern_rng(seed),
            left: len,
        }
    }
    /// Fill `buf` (whose length is a multiple of 8) with the next bytes; returns how many.
    fn next(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.left);
        self.rng.fill(&mut buf[..n]);
        self.left -= n;
        n
    }
}

fn write_pattern(s: &mut TcpStream, seed: u64, len: usize) -> std::io::Result<()> {
    let mut p = Pattern::new(seed, len);
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = p.next(&mut buf);
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

/// Read to EOF checking against the pattern. `Ok(len)` or `Err(description)`.
/// `last_byte` is set to when the `len`th byte arrived (the end of stream
/// may come a round trip later, when the sender's FIN waited for its window).
fn check_pattern<R: Read>(
    r: &mut R,
    seed: u64,
    len: usize,
    last_byte: &mut Option<Instant>,
) -> Result<usize, String> {
    let mut p = Pattern::new(seed, len);
    let mut want = vec![0u8; BLOCK];
    let mut want_len = 0;
    let mut want_pos = 0;
    let mut got = vec![0u8; BLOCK];
    let mut total = 0usize;
    loop {
        let n = r
            .read(&mut got)
            .map_err(|e| format!("read after {total} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        let mut i = 0;
        while i < n {
            if want_pos == want_len {
                want_len = p.next(&mut want);
                want_pos = 0;
                if want_len == 0 {
                    return Err(format!("more than the expected {len} bytes"));
                }
            }
            let k = (n - i).min(want_len - want_pos);
            if got[i..i + k] != want[want_pos..want_pos + k] {
                let off = (0..k)
                    .find(|j| got[i + j] != want[want_pos + j])
                    .unwrap_or(0);
                return Err(format!("content differs at offset {}", total + i + off));
            }
            i += k;
            want_pos += k;
        }
        total += n;
        if total == len && last_byte.is_none() {
            *last_byte = Some(Instant::now());
        }
    }
    if total != len {
        return Err(format!("got {total} bytes, expected {len}"));
    }
    Ok(total)
}

fn serve_conn(s: TcpStream) -> Result<(), String> {
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(BLOCK, s);
    let mut header = String::new();
    r.read_line(&mut header).map_err(|e| e.to_string())?;
    let words: Vec<&str> = header.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("bad header '{}'", header.trim()))
    };
    match words.first().copied() {
        Some("echo") => {
            let mut buf = vec![0u8; BLOCK];
            loop {
                let n = r.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            }
        }
        Some("get") => {
            write_pattern(&mut w, num(2)?, num(1)? as usize).map_err(|e| e.to_string())?;
            let _ = w.shutdown(Shutdown::Write);
            let mut sink = [0u8; 512];
            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
            return Ok(());
        }
        Some("put") => {
            let reply = match check_pattern(&mut r, num(2)?, num(1)? as usize, &mut None) {
                Ok(n) => format!("ok {n}\n"),
                Err(e) => format!("bad {e}\n"),
            };
            w.write_all(reply.as_bytes()).map_err(|e| e.to_string())?;
        }
        Some("who") => {
            w.write_all(format!("{local}\n").as_bytes())
                .map_err(|e| e.to_string())?;
        }
        _ => return Err(format!("bad header '{}'", header.trim())),
    }
    let _ = w.shutdown(Shutdown::Write);
    Ok(())
}

fn serve(addr: &str) -> Result<(), String> {
    let addr = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("0.0.0.0:{addr}")
    };
    let l = TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("tcptool: serving on {addr}");
    let _ = std::io::stdout().flush();
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || {
            if let Err(e) = serve_conn(s) {
                eprintln!("tcptool: server: {e}");
            }
        });
    }
    Ok(())
}

#[derive(Clone)]
struct ClientOpts {
    to: SocketAddr,
    op: String,
    len: usize,
    seed: u64,
    conns: usize,
    parallel: usize,
    expect: Option<String>,
    timeout: Duration,
}

/// One connection; returns (bytes up, bytes down), and sets `last_byte` to
/// when the last expected byte arrived (echo and get).
fn one(
    o: &ClientOpts,
    idx: usize,
    last_byte: &mut Option<Instant>,
) -> Result<(usize, usize), String> {
    let seed = o.seed.wrapping_add(idx as u64);
    let reset_expected = o.expect.as_deref() == Some("reset");
    let result = (|| -> Result<(usize, usize), String> {
        let mut s =
            TcpStream::connect_timeout(&o.to, o.timeout).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(o.timeout))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        match o.op.as_str() {
            "echo" => {
                s.write_all(b"echo\n").map_err(|e| format!("write: {e}"))?;
                let mut w = s.try_clone().map_err(|e| e.to_string())?;
                let (len, seed2) = (o.len, seed);
                let writer = std::thread::spawn(move || {
                    let r = write_pattern(&mut w, seed2, len);
                    let _ = w.shutdown(Shutdown::Write);
                    r
                });
                let got = check_pattern(&mut s, seed, o.len, last_byte);
                let wrote = writer.join().map_err(|_| "writer panicked".to_string())?;
                wrote.map_err(|e| format!("write: {e}"))?;
                Ok((o.len, got?))
            }
            "get" => {
                s.write_all(format!("get {} {seed}\n", o.len).as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                Ok((0, check_pattern(&mut s, seed, o.len, last_byte)?))
            }
            "put" => {
                s.write_all(format!("put {} {seed}\n", o.len).as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                write_pattern(&mut s, seed, o.len).map_err(|e| format!("write: {e}"))?;
                s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)
                    .map_err(|e| format!("read: {e}"))?;
                if reply.trim() != format!("ok {}", o.len) {
                    return Err(format!("server says '{}'", reply.trim()));
                }
                Ok((o.len, reply.len()))
            }
            "who" => {
                s.write_all(b"who\n").map_err(|e| format!("write: {e}"))?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)
                    .map_err(|e| format!("read: {e}"))?;
                if let Some(want) = &o.expect {
                    if reply.trim() != want {
                        return Err(format!("reached '{}', expected '{want}'", reply.trim()));
                    }
                }
                Ok((4, reply.len()))
            }
            other => Err(format!("unknown op '{other}'")),
        }
    })();
    match (result, reset_expected) {
        (Ok(r), false) => Ok(r),
        (Err(e), false) => Err(e),
        (Ok(_), true) => Err("expected a reset, the exchange completed".into()),
        // The RST may show as a reset or refused connect, a broken pipe on write,
        // or "not connected" on shutdown if it arrived first.
        (Err(e), true)
            if ["reset", "refused", "Broken pipe", "not connected"]
                .iter()
                .any(|k| e.contains(k)) =>
        {
            Ok((0, 0))
        }
        (Err(e), true) => Err(format!("expected a reset, got: {e}")),
    }
}

fn client(o: ClientOpts) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    let up = AtomicUsize::new(0);
    let down = AtomicUsize::new(0);
    // The latest last-byte arrival of any connection.
    let last_byte: Mutex<Option<Instant>> = Mutex::new(None);
    let start = Instant::now();
    let errors: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..o.parallel.min(o.conns).max(1))
            .map(|_| {
                sc.spawn(|| {
                    let mut errs = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= o.conns {
                            break;
                        }
                        let mut last = None;
                        let result = one(&o, i, &mut last);
                        if let (Some(t), Ok(mut latest)) = (last, last_byte.lock()) {
                            *latest = Some(latest.map_or(t, |l| l.max(t)));
                        }
                        match result {
                            Ok((u, d)) => {
                                up.fetch_add(u, Ordering::SeqCst);
                                down.fetch_add(d, Ordering::SeqCst);
                            }
                            Err(e) => errs.push(format!("connection {i}: {e}")),
                        }
                    }
                    errs
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec!["thread panicked".into()]))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    if !errors.is_empty() {
        for e in errors.iter().take(10) {
            println!("tcptool: FAIL {e}");
        }
        return Err(format!(
            "{} of {} connections failed",
            errors.len(),
            o.conns
        ));
    }
    let (u, d) = (up.load(Ordering::SeqCst), down.load(Ordering::SeqCst));
    // A download is done when its last byte is in, whether the sender's FIN
    // came with it or a round trip later (a FIN waits for the congestion window
    // when the sender's last write left before its shutdown).
    let last_byte_secs = last_byte
        .into_inner()
        .ok()
        .flatten()
        .map_or(secs, |t| (t - start).as_secs_f64());
    println!(
        "ok conns={} bytes_up={u} bytes_down={d} secs={secs:.3} last_byte_secs={last_byte_secs:.3} conns_per_s={:.1} mbytes_per_s={:.2}",
        o.conns,
        o.conns as f64 / secs,
        (u + d) as f64 / secs / 1e6
    );
    Ok(())
}

fn parse_client(args: &[String]) -> Result<ClientOpts, String> {
    let to_s = args.first().ok_or("client needs ADDR:PORT")?;
    let to: SocketAddr = to_s
        .parse()
        .map_err(|_| format!("bad address '{to_s}' (expected ADDR:PORT)"))?;
    let mut o = ClientOpts {
        to,
        op: "echo".into(),
        len: 1024,
        seed: 1,
        conns: 1,
        parallel: 1,
        expect: None,
        timeout: Duration::from_secs(30),
    };
    let mut it = args[1..].iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |what: &str| -> Result<usize, String> {
            v.parse()
                .map_err(|_| format!("bad value for {what}: '{v}'"))
        };
        match k.as_str() {
            "--op" => o.op = v.clone(),
            "--len" => {
                o.len = parse_size(v).ok_or_else(|| format!("bad value for --len: '{v}'"))?
            }
            "--seed" => o.seed = num("--seed")? as u64,
            "--conns" => o.conns = num("--conns")?,
            "--parallel" => o.parallel = num("--parallel")?,
            "--expect" => o.expect = Some(v.clone()),
            "--timeout" => o.timeout = Duration::from_secs(num("--timeout")? as u64),
            _ => return Err(format!("unknown option '{k}'")),
        }
    }
    Ok(o)
}

/// Forward frames between two TAP devices, each delayed by `ms`.
fn delayline(a: &str, b: &str, ms: &str) -> Result<(), String> {
    use smoltcp::phy::{Device, Medium, RxToken, TunTapInterface, TxToken};
    use std::collections::VecDeque;
    let delay = Duration::from_millis(ms.parse().map_err(|_| format!("bad delay '{ms}'"))?);
    let mut devs = [
        TunTapInterface::new(a, Medium::Ethernet).map_err(|e| format!("{a}: {e}"))?,
        TunTapInterface::new(b, Medium::Ethernet).map_err(|e| format!("{b}: {e}"))?,
    ];
    println!("tcptool: delayline ready on {a} {b}");
    let _ = std::io::stdout().flush();
    wait_until_up(a, Duration::from_secs(60))?;
    wait_until_up(b, Duration::from_secs(60))?;
    // Frames in flight towards device i, oldest first (the delay is constant).
    let mut queues: [VecDeque<(Instant, Vec<u8>)>; 2] = [VecDeque::new(), VecDeque::new()];
    let t0 = smoltcp::time::Instant::from_millis(0);
    loop {
        let now = Instant::now();
        let mut busy = false;
        for i in 0..2 {
            while queues[1 - i].len() < 100_000 {
                let Some((rx, _)) = devs[i].receive(t0) else {
                    break;
                };
                let frame = rx.consume(|f| f.to_vec());
                queues[1 - i].push_back((now + delay, frame));
                busy = true;
            }
        }
        for i in 0..2 {
            while queues[i].front().is_some_and(|(t, _)| *t <= now) {
                if let Some((_, f)) = queues[i].pop_front() {
                    if let Some(tx) = devs[i].transmit(t0) {
                        tx.consume(f.len(), |buf| buf.copy_from_slice(&f));
                    }
                    busy = true;
                }
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("serve") => serve(args.get(1).map(String::as_str).unwrap_or("8080")),
        Some("delayline") if args.len() == 4 => delayline(&args[1], &args[2], &args[3]),
        Some("client") => parse_client(&args[1..]).and_then(client),
        Some("flood") => flood::flood(&args[1..]),
        _ => Err("usage: miniproxy-tcptool serve [ADDR:]PORT | client ADDR:PORT --op echo|get|put|who [--len N] [--seed S] [--conns N] [--parallel P] [--expect reset|ADDR] [--timeout SECS] | delayline TAP_A TAP_B MS | flood IFACE DST_MAC DST_IP:PORT [--syn-rate N] [--junk-rate N] [--secs S] [--src A.B.C.FIRST-LAST]".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("tcptool: {e}");
            ExitCode::from(1)
        }
    }
}
