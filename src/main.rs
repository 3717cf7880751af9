//! The `yibuild` command line.

fn main() {
    println!("yibuild {}", env!("CARGO_PKG_VERSION"));
}
