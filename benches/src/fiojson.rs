//! fio's JSON output (`--output-format=json`), shared by every benchmark that runs fio.

use anyhow::{bail, Context, Result};

/// The `read` or `write` figures of fio's first job, from its stdout (the JSON may follow
/// other lines, such as the nbd engine's "connected" line). Fails when the job reported an
/// error or did no I/O.
pub fn first_job_side(stdout: &str, read: bool) -> Result<serde_json::Value> {
    let start = stdout.find('{').context("fio printed no JSON")?;
    let v: serde_json::Value = serde_json::Deserializer::from_str(&stdout[start..])
        .into_iter()
        .next()
        .context("fio printed no JSON")?
        .context("fio printed invalid JSON")?;
    let job = &v["jobs"][0];
    if job["error"].as_i64().unwrap_or(0) != 0 {
        bail!("fio job reported error {}", job["error"]);
    }
    let side = job[if read { "read" } else { "write" }].clone();
    if side["total_ios"].as_u64().unwrap_or(0) == 0 {
        bail!("fio completed no I/O");
    }
    Ok(side)
}
