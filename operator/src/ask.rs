//! `miniproxy ask`: one request to the resident spawner (crate::serve),
//! its reply line printed, its status the exit status. A client with no
//! relay between it and the socket: under TCG each process in the path
//! (socat behind a bash coprocess, say) added 44-90 ms to a warm spawn.

use crate::{bad, fail, Failure, Outcome};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

pub fn usage() -> String {
    format!(
        "Usage: miniproxy ask [--socket PATH] [--timing] WORD...
Send one request to the resident spawner ('miniproxy serve --help'): the
WORDs joined by TAB characters, one line; print its reply line on stdout
and exit with the reply's status: 0, or N from 'error rc=N MESSAGE' (2 for
a bad request, 1 for a failed operation). The words are a miniproxy
command line, e.g.
  miniproxy ask spawn --name c1 --mode reverse --listen 80 \\
      --upstream 10.0.0.1:8080 --ip 10.0.0.42/24 --memory 4
Options come before the first WORD (after it every word is the
request's; '--' ends them).
  --socket PATH  the daemon's socket (default {run}/serve.sock)
  --timing       append ' ask_us=N' to the reply: microseconds from writing
                 the request to reading the reply, measured in this process
                 (its own start and the connect are outside the span)
Exit status 1, with a message on stderr, when the daemon cannot be reached
or closes the connection without a reply; 2 for a bad invocation (no WORD,
or a WORD with a TAB or newline in it).
",
        run = run_dir().display()
    )
}

/// MINIPROXY_RUN_DIR as Env::load reads it (not loaded here: a client
/// needs none of the rest, and under TCG each file it reads costs).
fn run_dir() -> PathBuf {
    std::env::var("MINIPROXY_RUN_DIR")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/run/miniproxy".into())
        .into()
}

/// The status a reply line carries: 0 unless it is `error rc=N ...`
/// (N 1..=255; anything else there is 1).
pub fn reply_status(reply: &str) -> u8 {
    match reply.strip_prefix("error ") {
        None => 0,
        Some(rest) => rest
            .strip_prefix("rc=")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|&n| n != 0)
            .unwrap_or(1),
    }
}

/// Parse, ask, print; the reply's status (crate::main exits with it).
pub fn run(argv: &[String]) -> Result<u8, Failure> {
    let mut socket: Option<PathBuf> = None;
    let mut timing = false;
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(0);
            }
            "--timing" => timing = true,
            "--socket" => {
                let Some(v) = argv.get(i + 1).filter(|v| !v.is_empty()) else {
                    return bad("--socket needs a value");
                };
                socket = Some(v.into());
                i += 1;
            }
            o if o.starts_with("--socket=") && o.len() > "--socket=".len() => {
                socket = Some(o["--socket=".len()..].into());
            }
            "--" => {
                i += 1;
                break;
            }
            o if o.starts_with('-') => return bad(format!("unknown option '{o}'")),
            _ => break,
        }
        i += 1;
    }
    let words = &argv[i..];
    if words.is_empty() {
        return bad("nothing to ask: give the request's words (e.g. spawn --name ...)");
    }
    if let Some(w) = words.iter().find(|w| w.contains(['\t', '\n', '\r'])) {
        return bad(format!(
            "a word cannot hold a TAB or newline (the protocol's separators): {w:?}"
        ));
    }
    let path = socket.unwrap_or_else(|| run_dir().join("serve.sock"));
    let conn = UnixStream::connect(&path).or_else(|e| {
        fail(format!(
            "cannot reach the resident spawner at {}: {e} (is 'miniproxy serve' running?)",
            path.display()
        ))
    })?;
    let mut reader = BufReader::new(
        conn.try_clone()
            .or_else(|e| fail(format!("the socket: {e}")))?,
    );
    let mut out = conn;
    let request = format!("{}\n", words.join("\t"));
    let mut reply = String::new();
    let t0 = Instant::now();
    out.write_all(request.as_bytes())
        .or_else(|e| fail(format!("sending the request: {e}")))?;
    let n = reader
        .read_line(&mut reply)
        .or_else(|e| fail(format!("reading the reply: {e}")))?;
    let took = t0.elapsed();
    if n == 0 || !reply.ends_with('\n') {
        return fail("the daemon closed the connection without a reply");
    }
    let reply = reply.trim_end_matches('\n');
    let status = reply_status(reply);
    let mut stdout = std::io::stdout().lock();
    let written = if timing {
        writeln!(stdout, "{reply} ask_us={}", took.as_micros())
    } else {
        writeln!(stdout, "{reply}")
    };
    written
        .and_then(|()| stdout.flush())
        .or_else(|e| fail(format!("stdout: {e}")))?;
    Ok(status)
}

/// For crate::main's table: the status as an Outcome-like pair.
pub fn main(argv: &[String]) -> (Outcome, u8) {
    match run(argv) {
        Ok(n) => (Ok(()), n),
        Err(e) => (Err(e), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::reply_status;

    #[test]
    fn the_status_is_the_replys_rc() {
        assert_eq!(reply_status("spawned name=a how=warm"), 0);
        assert_eq!(reply_status("stopped name=a"), 0);
        assert_eq!(reply_status("error rc=2 --name needs a value"), 2);
        assert_eq!(reply_status("error rc=1 no instance named 'x'"), 1);
        // Malformed: still a failure, never success.
        assert_eq!(reply_status("error rc=0 odd"), 1);
        assert_eq!(reply_status("error rc=x odd"), 1);
        assert_eq!(reply_status("error something"), 1);
        assert_eq!(reply_status("error rc=300 big"), 1);
    }
}
