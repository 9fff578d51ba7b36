//! `pobox serve` started with a configuration file (OAuth JWKS, retention
//! policy…) and any number of users; on loopback, ephemeral ports.

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{free_port, wait_for_port};

pub struct Serve {
    pub dir: tempfile::TempDir,
    pub pop3: u16,
    pub pop3s: u16,
    pub bin: PathBuf,
    child: Child,
}

impl Serve {
    /// Starts `pobox serve --config` with `config` as the file's text and
    /// `users` (name, password) in its passwd-file.
    pub fn start(config: &str, users: &[(&str, &str)]) -> Serve {
        let bin = pobox_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for (user, password) in users {
            let mut add = Command::new(&bin)
                .arg("--data")
                .arg(&data)
                .args(["user", "add", user, "--password-stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            add.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
            assert!(add.wait().unwrap().success(), "pobox user add failed");
        }
        let config_file = dir.path().join("pobox.toml");
        std::fs::write(&config_file, config).unwrap();
        let (pop3, pop3s) = (free_port(), free_port());
        let child = Command::new(&bin)
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config_file)
            .args(["serve", "--pop3", &format!("127.0.0.1:{pop3}"), "--pop3s", &format!("127.0.0.1:{pop3s}"), "--lmtp", "none", "--smtp", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_port(pop3s, Duration::from_secs(15)), "pobox serve did not start");
        Serve { dir, pop3, pop3s, bin, child }
    }

    pub fn deliver(&self, user: &str, msgs: &[Vec<u8>]) {
        for m in msgs {
            let mut c = Command::new(&self.bin)
                .arg("--data")
                .arg(self.dir.path().join("data"))
                .args(["deliver", user])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(m).unwrap();
            assert!(c.wait().unwrap().success(), "pobox deliver failed");
        }
    }

    /// The server's certificate as a `fingerprint =` value.
    pub fn pin(&self) -> String {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_file(self.dir.path().join("data/tls/cert.pem")).unwrap();
        pobox_fetch::config::format_fingerprint(&pobox_fetch::tls::fingerprint(&der))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POBOX_BIN`, or the workspace's debug build.
pub fn pobox_bin() -> PathBuf {
    std::env::var_os("POBOX_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        target.join("debug/pobox")
    })
}
