//! The release-shaped `switchboard` binary run as a child process: for what an in-process
//! app cannot show (its own resident memory, its whole log output).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub logs: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Gateway {
    /// `serve` with `config` (TOML) in a file of its own, `env` on top (no inherited
    /// SWITCHBOARD* variables, no RUST_LOG unless given), bound to 127.0.0.1 on a free port
    /// unless `env` sets SWITCHBOARD__SERVER__BIND.
    /// Waits until the port accepts connections.
    pub fn start(config: &str, env: &[(&str, String)]) -> Gateway {
        let dir =
            std::env::temp_dir().join(format!("sb-gateway-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        // A bind given in `env` wins; its port is the one waited on.
        let port = env
            .iter()
            .find(|(k, _)| *k == "SWITCHBOARD__SERVER__BIND")
            .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(free_port);
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD")) {
            cmd.env_remove(k);
        }
        cmd.env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "gateway exited ({status}): {}",
                    logs.lock().unwrap().as_str()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start: {}",
                logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway {
            child,
            port,
            logs,
            dir,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Resident memory of the gateway process, in bytes (Linux: VmRSS).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status (Linux)");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kb * 1024
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
