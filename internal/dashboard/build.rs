//! Rebuilds the crate when the page's files change, since they are embedded.
fn main() {
    println!("cargo:rerun-if-changed=../../web");
}
