//! 10,000 gateways on one server over loopback WebSockets, clients in a separate process.
//! The program lives in `gateway-control/examples/control_scale.rs` (so it also runs as
//! `cargo run --release -p gateway-control --example control_scale`); see its docs.

#[path = "../../gateway-control/examples/control_scale.rs"]
mod control_scale;

fn main() {
    control_scale::main();
}
