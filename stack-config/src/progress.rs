//! Progress of a wait that can take minutes (RDS creating a database, a snapshot, a NAT
//! gateway, instances booting): what it waits for, the status last seen, the time so far and
//! a percentage where AWS gives one. On a terminal each wait is a line redrawn in place (the
//! waits of one round side by side); otherwise plain lines, one when the status changes and
//! at most one a minute between, so a CI log stays readable.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain-line wait says it is still waiting with the same status.
const PLAIN_EVERY: Duration = Duration::from_secs(60);

/// The bars of every wait under way, so concurrent waits do not draw over each other.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

pub struct Wait {
    what: String,
    started: Instant,
    bar: Option<ProgressBar>,
    /// Plain lines: the status last printed, and when.
    last: Option<(String, Instant)>,
}

impl Wait {
    /// Starts waiting for `what` ("RDS to create anb-db"); `hint` (may be empty) says how
    /// long it usually takes.
    pub fn start(what: impl Into<String>, hint: &str) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = bars().add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} waiting for {prefix} [{elapsed}] {msg}")
                    .expect("a valid template"),
            );
            bar.set_prefix(what.clone());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        if bar.is_none() {
            let hint = if hint.is_empty() {
                String::new()
            } else {
                format!(" ({hint})")
            };
            eprintln!("  waiting for {what}{hint}");
        }
        Self {
            what,
            started: Instant::now(),
            bar,
            last: None,
        }
    }

    /// What AWS reports now: a status word and, where it gives one, a percentage.
    pub fn status(&mut self, status: &str, percent: Option<f64>) {
        let text = match percent {
            Some(p) => format!("{status}, {p:.0} %"),
            None => status.to_owned(),
        };
        if let Some(bar) = &self.bar {
            bar.set_message(text);
            return;
        }
        let due = match &self.last {
            None => true,
            Some((said, at)) => *said != text || at.elapsed() >= PLAIN_EVERY,
        };
        if due {
            eprintln!(
                "  waiting for {} ({text}, {})",
                self.what,
                elapsed(self.started.elapsed())
            );
            self.last = Some((text, Instant::now()));
        }
    }

    /// The wait is over (`outcome`: "available", "deleted", …): one line that stays.
    pub fn done(mut self, outcome: &str) {
        let line = format!(
            "  {}: {outcome} after {}",
            self.what,
            elapsed(self.started.elapsed())
        );
        match self.bar.take() {
            Some(bar) => {
                bar.finish_and_clear();
                bars().remove(&bar);
                let _ = bars().println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Wait {
    /// A wait abandoned by an error takes its bar with it.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            bars().remove(&bar);
        }
    }
}

/// "45 s", "3 min 12 s".
fn elapsed(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 60 {
        format!("{seconds} s")
    } else {
        format!("{} min {:02} s", seconds / 60, seconds % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_minutes_once_past_one() {
        assert_eq!(elapsed(Duration::from_secs(45)), "45 s");
        assert_eq!(elapsed(Duration::from_secs(192)), "3 min 12 s");
    }
}
