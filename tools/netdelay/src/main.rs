//! `netdelay TAP_A TAP_B [options]`: forward frames between two TAP devices
//! through a [`Link`] per direction (see the library and `--help`).
//!
//! Life cycle, so a script can set the devices up before any frame moves:
//! open (or create) both TAP devices, print `netdelay: ready on A B`, wait for
//! one line on stdin, then forward until stdin reaches end of file, and print
//! the final counts. The devices may be moved to other network namespaces
//! between "ready" and the go line: an open TAP keeps working across the move.
//! Meanwhile `seed N` lines on stdin reseed both directions' loss decisions
//! (between two frames) and are answered `netdelay: seed N` once in force, so
//! a benchmark can give every target's transfer the same losses without
//! tearing the link down.
//!
//! Waiting: one `mio` poll on both devices and on a waker (a stdin command or
//! stdin's end), with
//! a timeout up to the next frame's due time. epoll counts in whole
//! milliseconds, so the last millisecond before a due time is slept in steps
//! of at most 100 µs, checking the devices between steps: frames leave within
//! about 0.1 ms of their due time and arrivals are stamped as closely.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use netdelay::cli::{direction_seeds, parse_command, stats_line, Args, Command};
use netdelay::link::Link;
use smoltcp::phy::{Device, Medium, RxToken, TunTapInterface, TxToken};

/// Woken by the stdin thread: a command waits in the channel, or stdin ended.
const STDIN: Token = Token(2);
const STATS_EVERY: Duration = Duration::from_millis(20);
const FINE_STEP: Duration = Duration::from_micros(100);

fn write_stats(path: &str, line: &str) -> Result<(), String> {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, format!("{line}\n")).map_err(|e| format!("writing {tmp}: {e}"))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {tmp} to {path}: {e}"))
}

fn run() -> Result<(), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = Args::parse(&argv)?;
    let mut devs = [
        TunTapInterface::new(&args.tap_a, Medium::Ethernet)
            .map_err(|e| format!("opening TAP device '{}': {e}", args.tap_a))?,
        TunTapInterface::new(&args.tap_b, Medium::Ethernet)
            .map_err(|e| format!("opening TAP device '{}': {e}", args.tap_b))?,
    ];
    let (seed_ab, seed_ba) = args.seeds();
    // links[i] carries the frames received on devs[i] to devs[1 - i].
    let mut links = [
        Link::new(args.ab.clone(), seed_ab),
        Link::new(args.ba.clone(), seed_ba),
    ];
    println!("netdelay: config: {}", args.describe());
    println!("netdelay: ready on {} {}", args.tap_a, args.tap_b);
    let _ = std::io::stdout().flush();

    let mut go = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut go)
        .map_err(|e| format!("reading stdin: {e}"))?;
    if n == 0 {
        return Err("stdin ended before the go line".into());
    }

    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    for (i, d) in devs.iter().enumerate() {
        poll.registry()
            .register(&mut SourceFd(&d.as_raw_fd()), Token(i), Interest::READABLE)
            .map_err(|e| format!("registering device {i}: {e}"))?;
    }
    let waker = std::sync::Arc::new(Waker::new(poll.registry(), STDIN).map_err(|e| e.to_string())?);
    // The channel's end (the thread drops its sender) is stdin's end.
    let (commands, command_rx) = std::sync::mpsc::channel::<Command>();
    {
        let waker = waker.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match parse_command(&line) {
                    Ok(Some(c)) => {
                        if commands.send(c).is_err() {
                            break;
                        }
                        let _ = waker.wake();
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("netdelay: {e}"),
                }
            }
            drop(commands);
            let _ = waker.wake();
        });
    }

    let epoch = Instant::now();
    let t0 = smoltcp::time::Instant::from_millis(0);
    let mut events = Events::with_capacity(8);
    let mut last_stats = String::new();
    let mut last_write = Instant::now();
    let mut stopping = false;
    while !stopping {
        let now = epoch.elapsed();
        for i in 0..2 {
            while let Some((rx, _)) = devs[i].receive(t0) {
                let frame = rx.consume(|f| f.to_vec());
                links[i].offer(now, frame);
            }
        }
        let now = epoch.elapsed();
        for i in 0..2 {
            while let Some(frame) = links[i].pop_due(now) {
                if let Some(tx) = devs[1 - i].transmit(t0) {
                    tx.consume(frame.len(), |buf| buf.copy_from_slice(&frame));
                }
            }
        }
        if let Some(path) = &args.stats {
            let line = stats_line(&links[0].counters(), &links[1].counters());
            if line != last_stats && last_write.elapsed() >= STATS_EVERY {
                write_stats(path, &line)?;
                last_stats = line;
                last_write = Instant::now();
            }
        }
        let now = epoch.elapsed();
        let next_due = links.iter().filter_map(Link::next_due).min();
        let mut timeout = next_due.map(|t| t.saturating_sub(now));
        if args.stats.is_some() {
            // Come back to write counts that changed since the last write.
            timeout = Some(timeout.map_or(STATS_EVERY, |t| t.min(STATS_EVERY)));
        }
        if let Some(t) = timeout.filter(|t| *t < Duration::from_millis(1)) {
            // Below epoll's resolution: sleep a fine step, then look again.
            std::thread::sleep(t.min(FINE_STEP));
            poll.poll(&mut events, Some(Duration::ZERO))
                .map_err(|e| format!("poll: {e}"))?;
        } else {
            // Round down to whole ms so epoll never oversleeps the due time.
            let coarse = timeout.map(|t| Duration::from_millis(t.as_millis() as u64));
            match poll.poll(&mut events, coarse) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
        if events.iter().any(|e| e.token() == STDIN) {
            loop {
                match command_rx.try_recv() {
                    Ok(Command::Seed(seed)) => {
                        let (ab, ba) = direction_seeds(seed);
                        links[0].reseed(ab);
                        links[1].reseed(ba);
                        println!("netdelay: seed {seed}");
                        let _ = std::io::stdout().flush();
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
        }
    }
    let line = stats_line(&links[0].counters(), &links[1].counters());
    if let Some(path) = &args.stats {
        write_stats(path, &line)?;
    }
    println!("netdelay: stats: {line}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netdelay: {e}");
            ExitCode::from(1)
        }
    }
}
