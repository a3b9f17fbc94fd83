//! `netdelay`: a WAN emulator for kernels without `sch_netem`. It forwards
//! Ethernet frames between two TAP devices with a per-direction one-way delay,
//! optional rate limit and seeded random loss, and counts what it forwarded
//! and dropped. The binary (`src/main.rs`) does the device I/O; the link model
//! ([`link`]) and the command line ([`cli`]) are pure and host-tested.
#![forbid(unsafe_code)]

pub mod cli;
pub mod link;
