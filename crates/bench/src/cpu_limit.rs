//! `--replica-cpu`: each chatgate process in a cgroup of its own with a CPU quota, as if
//! each replica had a small host to itself. On one shared machine the ramp otherwise
//! measures the machine: two replicas split the same two cores that one had, and adding a
//! replica adds work without adding CPU. With a quota per process, what runs out first is
//! each replica's own CPU, as in a deployment, and a second replica brings its own.
//!
//! Linux only, as root: the cgroup v1 `cpu` controller (`/sys/fs/cgroup/cpu`) or cgroup
//! v2 with `cpu` among the root's controllers.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The fraction of one core each chatgate process may use, when limited.
static FRACTION: OnceLock<f64> = OnceLock::new();

/// The scheduler's accounting period; the quota is a share of it.
const PERIOD_US: u64 = 100_000;

/// From now on, every chatgate process started is limited to `fraction` of one core.
pub fn limit_each(fraction: f64) {
    let _ = FRACTION.set(fraction);
}

/// A process's own cgroup, removed when dropped.
pub struct CpuLimit {
    dir: PathBuf,
}

impl CpuLimit {
    /// Puts `pid` (all of its threads) in a cgroup of its own with the quota set by
    /// [`limit_each`]; `None` when no limit was set.
    pub fn apply(pid: u32) -> io::Result<Option<Self>> {
        let Some(&fraction) = FRACTION.get() else {
            return Ok(None);
        };
        let quota = ((fraction * PERIOD_US as f64).round() as u64).max(1_000);
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let (dir, settings): (PathBuf, Vec<(&str, String)>) = if v1.join("cpu.cfs_quota_us").exists() {
            (
                v1.join(format!("chatgate-bench-{pid}")),
                vec![
                    ("cpu.cfs_period_us", PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            // Children get the controller only when the root hands it down.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            (
                v2.join(format!("chatgate-bench-{pid}")),
                vec![("cpu.max", format!("{quota} {PERIOD_US}"))],
            )
        } else {
            return Err(io::Error::other(
                "--replica-cpu needs the cgroup cpu controller (/sys/fs/cgroup/cpu, or cpu in /sys/fs/cgroup/cgroup.controllers)",
            ));
        };
        let fail = |what: &str, e: io::Error| {
            io::Error::other(format!(
                "--replica-cpu: cannot {what} {} (are you root?): {e}",
                dir.display()
            ))
        };
        std::fs::create_dir(&dir).map_err(|e| fail("make", e))?;
        let limit = Self { dir: dir.clone() };
        for (file, value) in settings {
            std::fs::write(dir.join(file), value).map_err(|e| fail("set", e))?;
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| fail("move the process into", e))?;
        Ok(Some(limit))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // The process is killed as its handle drops; its cgroup can go once it is reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("left behind: {} (remove it with rmdir)", self.dir.display());
    }
}
