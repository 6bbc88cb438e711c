//! The clients that drive every server identically: nbdcopy, fio's nbd engine, and iperf3
//! for the loopback ceiling.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::proc::{self, Ended};

/// One measurement, run against every server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Test {
    CopyWrite,
    CopyRead,
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
    Latency,
}

impl Test {
    pub const ALL: [Test; 7] = [
        Self::CopyWrite,
        Self::CopyRead,
        Self::RandRead,
        Self::RandWrite,
        Self::SeqRead,
        Self::SeqWrite,
        Self::Latency,
    ];

    /// Stable key for JSON.
    pub fn key(self) -> &'static str {
        match self {
            Self::CopyWrite => "nbdcopy-write",
            Self::CopyRead => "nbdcopy-read",
            Self::RandRead => "randread-4k-qd32",
            Self::RandWrite => "randwrite-4k-qd32",
            Self::SeqRead => "seqread-1m-qd16",
            Self::SeqWrite => "seqwrite-1m-qd16",
            Self::Latency => "randread-4k-qd1-lat",
        }
    }

    /// Row label in the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::CopyWrite => "nbdcopy write",
            Self::CopyRead => "nbdcopy read",
            Self::RandRead => "fio randread 4k qd32",
            Self::RandWrite => "fio randwrite 4k qd32",
            Self::SeqRead => "fio seqread 1M qd16",
            Self::SeqWrite => "fio seqwrite 1M qd16",
            Self::Latency => "fio randread 4k qd1",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::CopyWrite | Self::CopyRead | Self::SeqRead | Self::SeqWrite => "MB/s",
            Self::RandRead | Self::RandWrite => "IOPS",
            Self::Latency => "us",
        }
    }

    pub fn higher_is_better(self) -> bool {
        self != Self::Latency
    }

    /// The fio job parameters: (rw, block size, iodepth).
    fn fio_job(self) -> Option<(&'static str, &'static str, u32)> {
        Some(match self {
            Self::RandRead => ("randread", "4k", 32),
            Self::RandWrite => ("randwrite", "4k", 32),
            Self::SeqRead => ("read", "1M", 16),
            Self::SeqWrite => ("write", "1M", 16),
            Self::Latency => ("randread", "4k", 1),
            Self::CopyWrite | Self::CopyRead => return None,
        })
    }
}

/// Paths of the client programs.
#[derive(Debug)]
pub struct Clients {
    pub nbdcopy: PathBuf,
    pub fio: PathBuf,
    /// None only in smoke mode when iperf3 is missing.
    pub iperf3: Option<PathBuf>,
    pub size: u64,
    pub runtime_s: u32,
    pub ramp_s: u32,
    pub iperf_s: u32,
}

impl Clients {
    /// Bound for one nbdcopy of the whole export: generous (10 MB/s) plus a minute.
    fn copy_timeout(&self) -> Duration {
        Duration::from_secs(60 + self.size / 10_000_000)
    }

    /// Run `test` against `uri`; returns the value in the test's unit.
    pub fn run(&self, test: Test, uri: &str, source: &Path) -> Result<f64> {
        match test {
            Test::CopyWrite => {
                let mut cmd = Command::new(&self.nbdcopy);
                cmd.arg(source).arg(uri);
                self.nbdcopy(&mut cmd)
            }
            Test::CopyRead => {
                let mut cmd = Command::new(&self.nbdcopy);
                cmd.arg(uri).arg("null:");
                self.nbdcopy(&mut cmd)
            }
            _ => self.fio(test, uri),
        }
    }

    fn nbdcopy(&self, cmd: &mut Command) -> Result<f64> {
        let out = proc::run_ok("nbdcopy", cmd, self.copy_timeout())?;
        Ok(self.size as f64 / out.elapsed.as_secs_f64() / 1e6)
    }

    /// The fio command line for `test` (also shown in the report).
    pub fn fio_command(&self, test: Test, uri: &str) -> Option<Command> {
        let (rw, bs, qd) = test.fio_job()?;
        let mut cmd = Command::new(&self.fio);
        cmd.arg(format!("--name={}", test.key()));
        cmd.args(["--ioengine=nbd", &format!("--uri={uri}"), &format!("--rw={rw}")]);
        cmd.args([format!("--bs={bs}"), format!("--iodepth={qd}")]);
        cmd.args(["--time_based", &format!("--runtime={}", self.runtime_s)]);
        cmd.arg(format!("--ramp_time={}", self.ramp_s));
        cmd.arg("--output-format=json");
        Some(cmd)
    }

    fn fio(&self, test: Test, uri: &str) -> Result<f64> {
        let mut cmd = self.fio_command(test, uri).expect("fio test");
        let timeout = Duration::from_secs(u64::from(self.runtime_s + self.ramp_s) + 60);
        let out = proc::run_ok("fio", &mut cmd, timeout)?;
        parse_fio(test, &out.stdout).with_context(|| format!("fio output:\n{}", out.tail()))
    }

    /// Loopback TCP throughput in MB/s with iperf3 (one-off server on a free port).
    pub fn iperf3(&self, work: &Path) -> Result<f64> {
        let Some(iperf3) = &self.iperf3 else { bail!("iperf3 is not installed") };
        let port = proc::free_port()?;
        let log = work.join("iperf3-server.log");
        let mut srv = Command::new(iperf3);
        srv.args(["-s", "-1", "-p", &port.to_string(), "-B", "127.0.0.1"]);
        let mut server = proc::spawn_logged("iperf3 -s", &mut srv, &log)?;
        proc::wait_listening("iperf3 -s", port, Duration::from_secs(10), || Ok(server.try_wait()?.is_none()))?;
        let mut cli = Command::new(iperf3);
        cli.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", &self.iperf_s.to_string()]);
        cli.arg("-J");
        let out = proc::run_ok("iperf3 -c", &mut cli, Duration::from_secs(u64::from(self.iperf_s) + 30))?;
        // The one-off server exits by itself after the test; the guard covers the rest.
        if let Ended::Killed = server.stop(Duration::from_secs(5)) {
            eprintln!("nbd-bench: iperf3 server had to be killed");
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout).context("iperf3 printed invalid JSON")?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
        Ok(bps / 8.0 / 1e6)
    }
}

/// Extract the test's figure from fio's JSON (which follows a "connected" line on stdout).
fn parse_fio(test: Test, stdout: &str) -> Result<f64> {
    let (rw, _, _) = test.fio_job().expect("fio test");
    let side = crate::fiojson::first_job_side(stdout, rw.contains("read"))?;
    let num = |k: &str| side[k].as_f64().with_context(|| format!("fio JSON lacks {k}"));
    Ok(match test.unit() {
        "IOPS" => num("iops")?,
        "MB/s" => num("bw_bytes")? / 1e6,
        _ => side["lat_ns"]["mean"].as_f64().context("fio JSON lacks lat_ns.mean")? / 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json_after_banner() {
        let out = "fio: connected to NBD server\n{\"jobs\":[{\"error\":0,\"read\":{\"total_ios\":5,\
                   \"iops\":100.5,\"bw_bytes\":2000000,\"lat_ns\":{\"mean\":1500.0}},\
                   \"write\":{\"total_ios\":0}}]}\ntrailing";
        assert_eq!(parse_fio(Test::RandRead, out).unwrap(), 100.5);
        assert_eq!(parse_fio(Test::SeqRead, out).unwrap(), 2.0);
        assert_eq!(parse_fio(Test::Latency, out).unwrap(), 1.5);
        assert!(parse_fio(Test::RandWrite, out).is_err());
    }
}
