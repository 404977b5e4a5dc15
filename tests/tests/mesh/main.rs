//! Mesh scenarios through the public API, in virtual time (no sockets)

mod bad_input;
mod basics;
mod util;
