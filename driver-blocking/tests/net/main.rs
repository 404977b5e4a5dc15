//! Scenario tests of the blocking driver on loopback, alone and next to the tokio driver

mod lifecycle;
mod mesh;
mod outage;
mod pair;
mod routing;
mod util;
