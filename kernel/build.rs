//! Link the unikernel binaries (not the host-tested library) as a static,
//! position-dependent ELF at address 0 with our own layout and no C runtime.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=link.ld");
    for arg in [
        &format!("-T{dir}/link.ld"),
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,-z,max-page-size=4096",
        "-Wl,--build-id=none",
        "-Wl,-u,_start",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
