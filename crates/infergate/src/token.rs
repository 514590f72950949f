//! `infergate token issue`: prints a signed, expiring token for an endpoint in token mode.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Tokens for endpoints in `auth: {mode: token}`.
#[derive(Debug, clap::Args)]
pub struct TokenCommand {
    #[command(subcommand)]
    cmd: TokenSub,
}

#[derive(Debug, clap::Subcommand)]
enum TokenSub {
    /// Print a token (HS256 JWT, `aud` = the endpoint, `exp` = now + ttl) for `Authorization: Bearer <token>`.
    Issue {
        /// The endpoint the token is for.
        #[arg(long, value_name = "NAME")]
        endpoint: String,
        /// How long the token is valid, e.g. `30m`, `1h`, `12h`. A router refuses tokens that
        /// live longer than its `maxTokenLifetimeSeconds` (a day by default).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The endpoint's signing key file (its `auth.signingKeyFile`, or the Secret's `signingKey`).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30m, 1h, 12h)"))?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    let limit = infergate_config::MAX_TOKEN_LIFETIME_LIMIT;
    if d.as_secs() > limit {
        return Err(format!(
            "longer than any router accepts (maxTokenLifetimeSeconds is at most {limit}, a year)"
        ));
    }
    Ok(d)
}

impl TokenCommand {
    /// Runs the subcommand: the token on stdout, or an error on stderr and exit code 2.
    pub fn run(self) -> ExitCode {
        match self.cmd {
            TokenSub::Issue {
                endpoint,
                ttl,
                key_file,
            } => {
                let key = match infergate_config::read_signing_key_file("--key-file", &key_file) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                let default_max = infergate_config::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS;
                if ttl.as_secs() > default_max {
                    eprintln!(
                        "note: a router refuses this token unless its maxTokenLifetimeSeconds is at least {} (the default is {default_max})",
                        ttl.as_secs()
                    );
                }
                match infergate_auth::issue_token(&endpoint, ttl, &key) {
                    Ok(t) => {
                        println!("{t}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(2)
                    }
                }
            }
        }
    }
}
