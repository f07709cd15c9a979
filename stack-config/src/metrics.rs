//! What `provision metrics --output json` prints: the stack's CloudWatch figures over a time
//! range. `provision` writes it and `cargo xtask capacity … --target` reads it back, both
//! with these types, so the two cannot drift apart.

use chrono::{DateTime, Utc};

/// One metric over the range: a point a minute where CloudWatch has data.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Series {
    /// A stable key (`requests`, `web_cpu`, …) for programs reading the JSON.
    pub id: String,
    pub label: String,
    pub unit: String,
    /// (time, value), oldest first.
    pub points: Vec<(DateTime<Utc>, f64)>,
    /// Over the points; None without any.
    pub summary: Option<Summary>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Summary {
    /// Over `values`; None without any.
    pub fn of(values: impl Iterator<Item = f64> + Clone) -> Option<Self> {
        let count = values.clone().count();
        (count > 0).then(|| Self {
            min: values.clone().fold(f64::INFINITY, f64::min),
            max: values.clone().fold(f64::NEG_INFINITY, f64::max),
            mean: values.sum::<f64>() / count as f64,
        })
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub stack: String,
    pub region: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub period_seconds: i32,
    pub series: Vec<Series>,
    /// What could not be read, and why (no load balancer yet, say).
    pub notes: Vec<String>,
}

impl Metrics {
    /// A table: each metric's points, minimum, mean and maximum over the range.
    pub fn render(&self) -> String {
        let mut out = format!(
            "CloudWatch figures of stack {} ({}) from {} to {} (one point a minute):\n",
            self.stack,
            self.region,
            self.since.format("%Y-%m-%d %H:%M:%S UTC"),
            self.until.format("%Y-%m-%d %H:%M:%S UTC"),
        );
        out.push_str(&format!(
            "  {:<36} {:>6} {:>10} {:>10} {:>10}  unit\n",
            "metric", "points", "min", "mean", "max"
        ));
        for s in &self.series {
            let (points, [min, mean, max]) = match s.summary {
                Some(Summary { min, mean, max }) => {
                    (s.points.len(), [min, mean, max].map(|v| format!("{v:.3}")))
                }
                None => (0, ["-", "-", "-"].map(String::from)),
            };
            out.push_str(&format!(
                "  {:<36} {points:>6} {min:>10} {mean:>10} {max:>10}  {}\n",
                s.label, s.unit
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out.push_str(
            "CloudWatch publishes a minute's figures one to three minutes after it ends: \
             read again later for the last minutes.\n",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_reads_back_and_renders_every_series() {
        let text = r#"{"stack":"anb","region":"us-east-1",
            "since":"2026-12-03T10:00:00Z","until":"2026-12-03T10:02:00Z","period_seconds":60,
            "series":[{"id":"queue_visible","label":"videos waiting in the queue (max)",
              "unit":"messages","points":[["2026-12-03T10:00:00Z",3.0],["2026-12-03T10:01:00Z",1.0]],
              "summary":{"min":1.0,"mean":2.0,"max":3.0}},
              {"id":"requests","label":"requests","unit":"count","points":[],"summary":null}],
            "notes":["no load balancer"]}"#;
        let metrics: Metrics = serde_json::from_str(text).unwrap();
        assert_eq!(metrics.series[0].points.len(), 2);
        assert_eq!(
            metrics.series[0].summary,
            Summary::of([3.0, 1.0].into_iter())
        );
        let again: Metrics =
            serde_json::from_str(&serde_json::to_string(&metrics).unwrap()).unwrap();
        assert_eq!(again.series[1].summary, None);
        let table = metrics.render();
        assert!(
            table.contains("videos waiting in the queue (max)"),
            "{table}"
        );
        assert!(table.contains("note: no load balancer"), "{table}");
    }
}
