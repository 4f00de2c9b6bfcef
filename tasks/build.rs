//! The warehouse migrations are embedded at compile time (`sqlx::migrate!`):
//! a new or changed migration rebuilds the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
