//! Hostile input and faults: the engine must not spin when peers vanish,
//! must not let junk from unused addresses starve ARP, and must keep serving
//! real clients through a SYN flood.

use super::*;

/// Run the world for `d`, polling the proxy the way the unikernel's main loop
/// does (sleep for `poll_delay`, at least a microsecond), and return the
/// longest run of consecutive polls that found nothing to receive and were
/// told to poll again at once.
fn longest_zero_delay_run(w: &mut World, d: Duration) -> u64 {
    longest_zero_delay_run_bounded(w, d, u64::MAX)
}

/// [`longest_zero_delay_run`], giving up after `max_polls` polls.
fn longest_zero_delay_run_bounded(w: &mut World, d: Duration, max_polls: u64) -> u64 {
    let end = w.now() + d;
    let (mut run, mut longest) = (0u64, 0u64);
    let mut polls = 0;
    while w.now() < end && polls < max_polls {
        polls += 1;
        let had_rx = w.net.has_rx(w.proxy_port);
        w.step();
        let now = w.now();
        let delay = w.proxy.poll_delay(now);
        if delay == Some(Duration::ZERO) && !had_rx && !w.net.has_rx(w.proxy_port) {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
        let mut next = now + delay.unwrap_or(secs(1)).max(Duration::from_micros(1));
        if let Some(t) = w.net.next_arrival() {
            next = next.min(t.max(now + Duration::from_micros(1)));
        }
        for h in &mut w.hosts {
            if let Some(d) = h.poll_delay(now) {
                next = next.min(now + d.max(Duration::from_micros(1)));
            }
        }
        w.net.advance(next.min(end));
    }
    longest
}

/// Finding 3: a spliced connection whose client half-closed (client side in
/// CLOSE-WAIT, upstream in FIN-WAIT-2) and whose two peers then fell silent
/// until their ARP entries expired must not make the engine poll in a loop.
#[test]
fn silent_peers_with_expired_arp_do_not_busy_loop() {
    let mut w = reverse_world(Setup {
        serve: Serve::Silent,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"hello".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(5), |w| w.hosts[1].flows.first().is_some_and(|s| s.fin)));
    assert!(!w.hosts[0].flows[f].reset);
    // Both peers vanish: nothing they send or are sent arrives any more.
    let gone = Link {
        loss: 1.0,
        ..Link::default()
    };
    w.net.set_link(1, gone);
    w.net.set_link(2, gone);
    let longest = longest_zero_delay_run(&mut w, secs(200));
    assert!(
        longest < 100,
        "{longest} polls in a row with nothing to receive were told to poll again at once"
    );
}

/// Finding 3, the engine's side: whatever keeps smoltcp's `poll_at` in the
/// past without letting a poll do anything (here: a device with no TX room
/// while a socket has data to send), consecutive polls that do no work must
/// not be told to poll again at once. Once the device takes frames again the
/// transfer completes byte for byte.
#[test]
fn polls_that_do_nothing_back_off() {
    let mut w = reverse_world(Setup::default());
    let data = pattern(31, 200_000);
    let f = client_connect(&mut w, data.clone(), Close::AfterSend);
    assert!(w.run_until(secs(5), |w| w.proxy.stats().bytes_up > 0));
    w.net.set_tx_blocked(w.proxy_port, true);
    // Let what is in flight arrive and be handled.
    w.run_for(Duration::from_millis(50));
    let longest = longest_zero_delay_run_bounded(&mut w, secs(2), 100_000);
    assert!(
        longest < 20,
        "{longest} polls in a row that did nothing were told to poll again at once"
    );
    w.net.set_tx_blocked(w.proxy_port, false);
    assert!(w.run_until(secs(30), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    assert_bytes(&c.received, &data, "client received");
    assert_bytes(&w.hosts[1].flows[0].received, &data, "server received");
}
