//! Measuring on a shared machine: other processes (a build, a test run) take the same two
//! cores as the gateway and the load tool, and a percentile measured while they run says
//! more about them than about the gateway. Before each block of a scenario the tool waits
//! until the rest of the machine has been quiet for two seconds, and a block during which
//! it was not is measured again (up to twice). `--quiet-below 0` turns this off.

use crate::gateway::{Others, Ours};
use std::time::{Duration, Instant};

pub struct Quiet {
    /// The benchmark, the processes it measures and the servers they use.
    ours: Ours,
    /// Other processes may use this much of one core, in percent; 0: do not wait.
    limit: f64,
    /// The longest wait for quiet, then the block runs anyway.
    patience: Duration,
    /// Blocks measured again, and blocks kept although disturbed.
    pub redone: usize,
    pub disturbed: usize,
    pub waited: Duration,
    /// Other processes' share of one core during each block kept, in percent.
    kept: Vec<f64>,
}

impl Quiet {
    pub fn new(ours: Ours, limit: f64) -> Self {
        Self {
            ours,
            limit,
            patience: Duration::from_secs(600),
            redone: 0,
            disturbed: 0,
            waited: Duration::ZERO,
            kept: Vec::new(),
        }
    }

    /// Waits until other processes have used less than the limit for two seconds in a row.
    pub async fn wait(&mut self) {
        if self.limit <= 0.0 {
            return;
        }
        let started = Instant::now();
        let mut quiet = 0;
        while quiet < 2 && started.elapsed() < self.patience {
            let before = Others::now(&self.ours);
            tokio::time::sleep(Duration::from_secs(1)).await;
            quiet = if before.percent_since(&self.ours) < self.limit {
                quiet + 1
            } else {
                0
            };
        }
        let waited = started.elapsed();
        if waited > Duration::from_secs(3) {
            eprintln!(
                "  (waited {:.0} s for other processes to quiet down)",
                waited.as_secs_f64()
            );
        }
        self.waited += waited;
    }

    /// Waits for quiet, then takes the snapshot that [`Quiet::keep`] compares with:
    ///
    /// ```ignore
    /// let mut tries = 0;
    /// let out = loop {
    ///     let before = quiet.begin().await;
    ///     let out = measure().await;
    ///     if quiet.keep(before, &mut tries) { break out; }
    /// };
    /// ```
    pub async fn begin(&mut self) -> Others {
        self.wait().await;
        Others::now(&self.ours)
    }

    /// Whether to keep the block that began at `before`: other processes stayed under the
    /// limit, or it was measured three times already.
    pub fn keep(&mut self, before: Others, tries: &mut usize) -> bool {
        *tries += 1;
        // CPU time is counted in clock ticks: a block shorter than half a second cannot be
        // judged (one tick of another process would look like a busy core)
        let short = before.elapsed() < Duration::from_millis(500);
        let others = before.percent_since(&self.ours);
        if self.limit <= 0.0 || short || others < self.limit {
            if !short {
                self.kept.push(others);
            }
            return true;
        }
        if *tries == 3 {
            self.kept.push(others);
            self.disturbed += 1;
            eprintln!("  (other processes used {others:.0}% of a core during this block; kept)");
            return true;
        }
        self.redone += 1;
        eprintln!("  (other processes used {others:.0}% of a core during this block; measuring it again)");
        false
    }

    pub fn summary(&self) -> String {
        let waits = format!(
            "the tool waited {:.0} s for quiet, measured {} block(s) again and kept {} although disturbed",
            self.waited.as_secs_f64(),
            self.redone,
            self.disturbed
        );
        if self.kept.is_empty() {
            // (and an empty sum of f64 is -0.0, printed "-0%")
            return format!("no block ran long enough to be judged (half a second); {waits}");
        }
        let mean = self.kept.iter().sum::<f64>() / self.kept.len() as f64;
        let max = self.kept.iter().copied().fold(0.0, f64::max);
        format!(
            "they used {mean:.0}% of a core on average (at most {max:.0}%) while the {} blocks kept ran \
             (blocks under half a second not counted); {waits}",
            self.kept.len(),
        )
    }
}
