//! Miniproxy's split-TCP engine over smoltcp, and the one command-line parser
//! shared by the unikernel and the host runner.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;

pub use config::{Config, ConfigError};
pub mod engine;

pub use engine::{Engine, EngineError, MemoryPlan, Stats};
#[cfg(any(test, feature = "testing"))]
pub mod sim;
#[cfg(test)]
mod tests;
