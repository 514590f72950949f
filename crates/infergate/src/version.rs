//! Build information for `infergate version` and `--version` (set by build.rs).

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git commit hash, or `unknown` when built outside a git checkout.
pub const COMMIT: &str = env!("INFERGATE_GIT_COMMIT");
/// Build date, UTC (`SOURCE_DATE_EPOCH` when set at build time).
pub const BUILD_DATE: &str = env!("INFERGATE_BUILD_DATE");
/// `rustc --version` of the compiler that built the binary.
pub const RUSTC: &str = env!("INFERGATE_RUSTC_VERSION");
/// The TLS stack and its crypto provider.
pub const CRYPTO: &str = "rustls ring";

/// The `--version` line (clap prints it after the binary's name).
pub const LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("INFERGATE_GIT_COMMIT"),
    ", built ",
    env!("INFERGATE_BUILD_DATE"),
    ", ",
    env!("INFERGATE_RUSTC_VERSION"),
    ", rustls ring)"
);

/// `infergate version`: one `key: value` line per field.
pub fn report() -> String {
    format!(
        "version: {VERSION}\ncommit: {COMMIT}\nbuild date: {BUILD_DATE}\nrustc: {RUSTC}\ncrypto: {CRYPTO}\n"
    )
}
