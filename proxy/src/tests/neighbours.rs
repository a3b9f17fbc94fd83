//! Upstream neighbours kept resolved (`engine::neighbours`): after an idle
//! minute a new connection does not wait for ARP; an idle instance and a
//! vanished upstream cost a bounded number of requests.

use super::*;

/// ARP requests the proxy sent for `target` in the capture: time and frame.
fn arp_request_frames_for(w: &World, target: Ipv4Address) -> Vec<(Instant, &[u8])> {
    w.net
        .captured
        .iter()
        .filter(|(_, p, f)| {
            *p == w.proxy_port
                && f.len() >= 42
                && f[12..14] == [8, 6]
                && f[20..22] == [0, 1]
                && f[38..42] == target.octets()
        })
        .map(|(t, _, f)| (*t, &f[..]))
        .collect()
}

/// The times of those requests.
fn arp_requests_for(w: &World, target: Ipv4Address) -> Vec<Instant> {
    arp_request_frames_for(w, target)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// When the proxy sent its first SYN to the server, if it did.
fn first_syn_to_server(w: &World) -> Option<Instant> {
    w.net
        .captured
        .iter()
        .find(|(_, p, f)| {
            *p == w.proxy_port
                && f.len() >= 54
                && f[12..14] == [8, 0]
                && f[23] == 6
                && f[30..34] == SERVER.octets()
                && f[47] & 0x12 == 0x02
        })
        .map(|(t, _, _)| *t)
}

/// The server 10 ms away, so that an ARP round trip shows (20 ms).
fn far_server_world() -> World {
    reverse_world(Setup {
        server_link: Link::delay_ms(10),
        ..Setup::default()
    })
}

/// After 65 s idle (the ARP entry lives 60 s) a new connection's upstream
/// SYN leaves at once, without an ARP request first; the entry was
/// refreshed once meanwhile, and the echo is byte-exact.
#[test]
fn upstream_stays_resolved_across_an_idle_minute() {
    let mut w = far_server_world();
    echo_roundtrip(&mut w, &pattern(1, 10_000), secs(5));
    w.net.capture = true;
    w.run_for(secs(65));
    let refreshes = arp_requests_for(&w, SERVER);
    assert_eq!(refreshes.len(), 1, "refreshes at {refreshes:?}");
    // The refresh went to the server's address alone (a unicast poll, smoltcp
    // patch 28): a broadcast would wake every instance on the bridge.
    let (_, refresh) = arp_request_frames_for(&w, SERVER)[0];
    assert_ne!(refresh[0..6], [0xff; 6], "the refresh was broadcast");
    assert_eq!(
        refresh[0..6],
        refresh[32..38],
        "sent to the MAC it asks about"
    );
    w.net.captured.clear();
    let start = w.now();
    echo_roundtrip(&mut w, &pattern(2, 10_000), secs(5));
    assert_eq!(
        arp_requests_for(&w, SERVER),
        [],
        "ARP before the new connection"
    );
    let syn = first_syn_to_server(&w).expect("a SYN to the server") - start;
    assert!(
        syn < Duration::from_millis(5),
        "the upstream SYN left {} ms after the client connected",
        syn.total_millis()
    );
}

/// An idle instance stops refreshing `KEEP` (10 min) after its last
/// connection: about one request per 55 s until then, none after.
#[test]
fn idle_instance_stops_refreshing() {
    let mut w = far_server_world();
    echo_roundtrip(&mut w, &pattern(1, 1_000), secs(5));
    let done = w.now();
    w.net.capture = true;
    w.run_for(secs(1_800));
    let asked = arp_requests_for(&w, SERVER);
    assert!(
        (9..=12).contains(&asked.len()),
        "{} refreshes in 30 idle minutes",
        asked.len()
    );
    let last = *asked.last().unwrap() - done;
    assert!(
        last <= secs(600),
        "a refresh {} s after the last connection",
        last.secs()
    );
    // Nothing else either: no polls without a reason.
    let polls = w.proxy_polls;
    w.run_for(secs(600));
    assert!(
        w.proxy_polls - polls < 10,
        "{} polls",
        w.proxy_polls - polls
    );
}

/// An upstream that stops answering is given up when its entry expires:
/// a few requests in its last seconds, then none.
#[test]
fn vanished_upstream_is_given_up() {
    let mut w = far_server_world();
    echo_roundtrip(&mut w, &pattern(1, 1_000), secs(5));
    w.net.set_link(
        2,
        Link {
            loss: 1.0,
            ..Link::default()
        },
    );
    w.net.capture = true;
    w.run_for(secs(300));
    let asked = arp_requests_for(&w, SERVER);
    assert!(
        (1..=5).contains(&asked.len()),
        "{} requests for a vanished upstream",
        asked.len()
    );
    assert!(*asked.last().unwrap() - asked[0] < secs(5));
}
