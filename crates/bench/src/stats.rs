//! Percentiles over samples, in microseconds.

pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        Self(values)
    }

    /// Adds another set's samples (a later block of the same measurement).
    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
        self.0.sort_by(f64::total_cmp);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`th percentile (0–100), nearest rank.
    pub fn p(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::Samples;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples::new((1..=100).map(f64::from).collect());
        assert_eq!(s.p(50.0), 50.0);
        assert_eq!(s.p(99.0), 99.0);
        assert_eq!(s.p(100.0), 100.0);
        assert!(Samples::new(vec![]).p(50.0).is_nan());
    }
}
