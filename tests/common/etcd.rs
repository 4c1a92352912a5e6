//! An etcd of one member for the tests that coordinate proxies through it (Debian's
//! `etcd-server`; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Certs;
use slotguard::localcluster::{free_port, wait_for};

/// An etcd of one member, its data in a directory of its own, stopped by pid.
pub struct Etcd {
    pub child: Option<Child>,
    pub port: u16,
    pub peer: u16,
    pub dir: PathBuf,
    /// Clients speak TLS, and must show a certificate the CA signed.
    pub tls: Option<Certs>,
    /// Authentication is on; root's password.
    pub root_password: Option<String>,
}

impl Etcd {
    /// Starts etcd, or returns `None` (the test is skipped) when it is not installed.
    pub async fn start(dir: &Path) -> Option<Etcd> {
        Etcd::start_with(dir, None).await
    }

    /// [`Etcd::start`], serving clients over TLS with `tls` when given.
    pub async fn start_with(dir: &Path, tls: Option<Certs>) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!(
                "SKIPPED: etcd is not installed (apt-get install etcd-server); .ci/run installs it"
            );
            return None;
        }
        let port = free_port().unwrap();
        let peer = std::iter::repeat_with(|| free_port().unwrap())
            .find(|&p| p != port)
            .unwrap();
        let mut etcd = Etcd {
            child: None,
            port,
            peer,
            dir: dir.join("etcd"),
            tls,
            root_password: None,
        };
        etcd.spawn().await;
        Some(etcd)
    }

    pub async fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut etcd = Command::new("etcd");
        if let Some(certs) = &self.tls {
            etcd.arg("--cert-file")
                .arg(&certs.server.0)
                .arg("--key-file")
                .arg(&certs.server.1)
                .arg("--trusted-ca-file")
                .arg(&certs.ca)
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", "t", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let answers = || async {
            match self.client().await {
                Ok(mut c) => c.status().await.is_ok(),
                Err(_) => false,
            }
        };
        wait_for(Duration::from_secs(20), answers)
            .await
            .expect("etcd answers");
    }

    /// A client, over TLS with the client certificate, as root once authentication is on.
    pub async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        let mut options = etcd_client::ConnectOptions::new();
        if let Some(certs) = &self.tls {
            let pem = |p: &Path| std::fs::read(p).unwrap();
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(pem(&certs.ca)))
                .identity(etcd_client::Identity::from_pem(
                    pem(&certs.client.0),
                    pem(&certs.client.1),
                ));
            options = options.with_tls(tls);
        }
        if let Some(password) = &self.root_password {
            options = options.with_user("root", password);
        }
        etcd_client::Client::connect([self.url()], Some(options)).await
    }

    /// Turns authentication on, with a root user.
    pub async fn require_auth(&mut self, password: &str) {
        let mut c = self.client().await.unwrap();
        c.user_add("root", password, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
        self.root_password = Some(password.to_string());
    }

    /// Sends `signal` (STOP, CONT) to it.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// kill -9 by pid.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
