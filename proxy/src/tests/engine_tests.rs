use super::*;

#[test]
fn one_byte_echo() {
    let mut w = reverse_world(Setup::default());
    echo_roundtrip(&mut w, b"x", secs(10));
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.completed, st.bytes_up, st.bytes_down), (1, 1, 1, 1));
}
