//! A runner for the real `infergate` binary: spawn it, read its stdout, signal it, run it to exit.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::repo_root;

/// The real `infergate` binary, its stdout read line by line on a thread.
pub struct Bin {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Bin {
    pub fn spawn(args: &[&str]) -> Bin {
        Bin::spawn_env(args, &[])
    }

    /// Spawns with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Bin {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infergate"));
        cmd.args(args);
        Bin::start(cmd, env)
    }

    /// Spawns with the soft open-files limit set to `soft` (through `sh -c 'ulimit -Sn'`,
    /// which then execs the binary: the child's pid is the binary's).
    pub fn spawn_with_soft_nofile(soft: u64, args: &[&str]) -> Bin {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -Sn {soft} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_infergate"))
            .args(args);
        Bin::start(cmd, &[])
    }

    fn start(mut cmd: Command, env: &[(&str, &str)]) -> Bin {
        let mut child = cmd
            .current_dir(repo_root())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn infergate");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Bin {
            child,
            lines: rx,
            seen: vec![],
        }
    }

    /// Waits (up to 20 s) for a stdout line matching `pred`, returning it.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!(
                        "no matching line; stdout so far: {:#?}\nstderr: {err}",
                        self.seen
                    );
                }
            }
        }
    }

    /// The first line matching `pred`, among those already read (by an earlier wait that
    /// skipped it) or, failing that, the next ones (up to 20 s): for lines whose order against
    /// others is not fixed.
    pub fn seen_or_wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        match self.seen.iter().find(|l| pred(l)) {
            Some(l) => l.clone(),
            None => self.wait_line(pred),
        }
    }

    /// Waits for the JSON `listening` line of `listener` and returns its address.
    pub fn listening(&mut self, listener: &str) -> SocketAddr {
        let l = self.wait_line(|l| {
            l.contains("\"listening\"") && l.contains(&format!("\"listener\":\"{listener}\""))
        });
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        v["addr"].as_str().unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for exit (up to 40 s).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("infergate did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit (up to 40 s) and returns the whole stdout (every line, also those already
    /// seen) and the whole stderr.
    pub fn finish(mut self) -> (String, String) {
        self.wait_exit();
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (self.seen.join("\n"), err)
    }

    /// Resident set high-water mark (VmHWM) and current RSS in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb = |key: &str| -> u64 {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
                * 1024
        };
        (kb("VmHWM:"), kb("VmRSS:"))
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for start-up failures): (exit code, stdout, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run infergate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to a file in `dir` and returns its path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}
