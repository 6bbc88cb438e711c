//! A throw-away X.509 PKI for TLS tests, made with the `openssl` command: a CA, a server
//! certificate for `localhost` / `127.0.0.1`, client certificates naming cluster nodes, and
//! a rogue CA whose certificates the server must refuse.
//!
//! Client certificates are laid out the way libnbd and qemu expect (`tls-certificates=DIR`):
//! `DIR/ca-cert.pem`, `DIR/client-cert.pem`, `DIR/client-key.pem`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{require_tool, run_timeout, OutputExt};
use crate::tempdir::TempDir;

const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA with its server certificate, in its own temporary directory.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(require_tool("openssl"));
    cmd.current_dir(dir).args(args);
    run_timeout(&mut cmd, OPENSSL_TIMEOUT).assert_success("openssl");
}

/// A new P-256 key and a self-signed CA certificate `NAME-cert.pem` / `NAME-key.pem`.
fn make_ca(dir: &Path, name: &str) {
    let (key, cert, subj) = (format!("{name}-key.pem"), format!("{name}-cert.pem"), format!("/CN={name}"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `FILE-cert.pem` / `FILE-key.pem` with subject CN `cn`, signed by CA `ca`.
fn make_leaf(dir: &Path, ca: &str, file: &str, cn: &str, ext: &str) {
    let (key, csr, cert, extfile) =
        (format!("{file}-key.pem"), format!("{file}.csr"), format!("{file}-cert.pem"), format!("{file}.ext"));
    let subj = if cn.is_empty() { "/O=gnbd-tests".to_string() } else { format!("/CN={cn}") };
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subj,
        ],
    );
    std::fs::write(dir.join(&extfile), format!("{ext}\nbasicConstraints=CA:FALSE\n")).expect("extension file");
    let (ca_cert, ca_key) = (format!("{ca}-cert.pem"), format!("{ca}-key.pem"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
}

impl Pki {
    /// Makes the CA (`ca-cert.pem`), the server certificate and a rogue CA.
    pub fn new() -> Pki {
        let dir = TempDir::new();
        make_ca(dir.path(), "ca");
        make_ca(dir.path(), "rogue");
        make_leaf(
            dir.path(),
            "ca",
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        );
        Pki { dir }
    }

    /// The CA certificate clients and the server trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca-cert.pem")
    }

    /// A CA that signed nothing the server uses (a client trusting only it must refuse the
    /// server).
    pub fn rogue_ca(&self) -> PathBuf {
        self.dir.join("rogue-cert.pem")
    }

    /// `--tls-cert FILE --tls-key FILE --tls-ca FILE` for `gnbd_serv`.
    pub fn server_args(&self) -> Vec<PathBuf> {
        vec![
            "--tls-cert".into(),
            self.dir.join("server-cert.pem"),
            "--tls-key".into(),
            self.dir.join("server-key.pem"),
            "--tls-ca".into(),
            self.ca(),
        ]
    }

    fn client_dir(&self, file: &str, signer: &str, cn: &str, ext: &str) -> PathBuf {
        make_leaf(self.dir.path(), signer, file, cn, ext);
        let out = self.dir.join(file);
        std::fs::create_dir_all(&out).expect("client directory");
        let copy = |from: String, to: &str| {
            std::fs::copy(self.dir.join(&from), out.join(to)).unwrap_or_else(|e| panic!("copy {from}: {e}"));
        };
        copy("ca-cert.pem".into(), "ca-cert.pem");
        copy(format!("{file}-cert.pem"), "client-cert.pem");
        copy(format!("{file}-key.pem"), "client-key.pem");
        out
    }

    /// A client certificate directory for node `cn` (subject CN and DNS name), signed by the CA.
    pub fn client(&self, cn: &str) -> PathBuf {
        self.client_dir(cn, "ca", cn, &format!("subjectAltName=DNS:{cn}\nextendedKeyUsage=clientAuth"))
    }

    /// A client certificate with no CN, whose only name is the DNS subjectAltName `dns`.
    pub fn client_san_only(&self, dns: &str) -> PathBuf {
        self.client_dir(
            &format!("san-{dns}"),
            "ca",
            "",
            &format!("subjectAltName=DNS:{dns}\nextendedKeyUsage=clientAuth"),
        )
    }

    /// A client certificate for node `cn` signed by the rogue CA (the server must refuse it).
    /// Its `ca-cert.pem` is the real CA, so the client itself trusts the server.
    pub fn rogue_client(&self, cn: &str) -> PathBuf {
        self.client_dir(&format!("rogue-{cn}"), "rogue", cn, "extendedKeyUsage=clientAuth")
    }

    /// A directory with only `ca-cert.pem`: a client without a certificate.
    pub fn anonymous_client(&self) -> PathBuf {
        let out = self.dir.join("anonymous");
        std::fs::create_dir_all(&out).expect("client directory");
        std::fs::copy(self.ca(), out.join("ca-cert.pem")).expect("copy CA");
        out
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
