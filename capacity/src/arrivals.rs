//! When uploads arrive: the command line's patterns (constant, Poisson, ramp, burst) and
//! explicit times, turned into sorted arrival times.

use std::cmp::Ordering;

use anyhow::{anyhow, bail};

use crate::Rng;

/// Length of a rate pattern given without one ("constant:10/min").
const DEFAULT_MINUTES: f64 = 60.0;
/// Every form the command line accepts, for error messages.
pub const ACCEPTED_FORMS: &str =
    "constant:10/min[:30m], poisson:10/min[:30m], ramp:0-20/min[:30m], \
     burst:100, or the path of a CSV file with one arrival time in seconds per line";

/// When uploads arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Arrivals {
    /// `per_minute` uploads a minute, evenly spaced, for `minutes`.
    Constant { per_minute: f64, minutes: f64 },
    /// Poisson arrivals at `per_minute`, for `minutes` (seeded).
    Poisson { per_minute: f64, minutes: f64 },
    /// Rate rising linearly from `from` to `to` uploads/min over `minutes` (evenly spaced by
    /// the integral of the rate).
    Ramp { from: f64, to: f64, minutes: f64 },
    /// `count` uploads all at t = 0.
    Burst { count: usize },
    /// Explicit arrival times in seconds.
    Times(Vec<f64>),
}

impl Arrivals {
    /// Parses the CLI forms: "constant:10/min" (60 minutes; "constant:10/min:30m" for 30),
    /// "poisson:10/min[:30m]", "ramp:0-20/min[:30m]" or "burst:100". Durations may also be
    /// given as "2h" or "90s". A CSV file of times is the caller's to read ([`Self::from_csv`]):
    /// this crate opens no file.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let spec = spec.trim();
        let (kind, rest) = match spec.split_once(':') {
            Some((kind, rest)) => (kind.to_ascii_lowercase(), Some(rest)),
            None => (spec.to_ascii_lowercase(), None),
        };
        match (kind.as_str(), rest) {
            ("constant", Some(rest)) => {
                let (rate, minutes) = split_duration(spec, rest)?;
                Ok(Self::Constant {
                    per_minute: parse_rate(spec, rate)?,
                    minutes,
                })
            }
            ("poisson", Some(rest)) => {
                let (rate, minutes) = split_duration(spec, rest)?;
                Ok(Self::Poisson {
                    per_minute: parse_rate(spec, rate)?,
                    minutes,
                })
            }
            ("ramp", Some(rest)) => {
                let (rates, minutes) = split_duration(spec, rest)?;
                let (from, to) = parse_ramp(spec, rates)?;
                Ok(Self::Ramp { from, to, minutes })
            }
            ("burst", Some(rest)) => match rest.trim().parse::<usize>() {
                Ok(count) if count > 0 => Ok(Self::Burst { count }),
                _ => bail!(
                    "bad upload count `{rest}` in `{spec}`: expected a whole number above 0 \
                     like burst:100; accepted forms: {ACCEPTED_FORMS}"
                ),
            },
            ("constant" | "poisson" | "ramp" | "burst", None) => bail!(
                "arrival pattern `{spec}` is missing its parameters; \
                 accepted forms: {ACCEPTED_FORMS}"
            ),
            _ => bail!(
                "unknown arrival pattern `{spec}` (neither a known form nor an existing file); \
                 accepted forms: {ACCEPTED_FORMS}"
            ),
        }
    }

    /// Arrival times from CSV text: one time in seconds per line; a first line that is not
    /// a number is a header, blank lines are skipped. `source` names the text in errors (the
    /// file's path).
    pub fn from_csv(text: &str, source: &str) -> anyhow::Result<Self> {
        let mut times = Vec::new();
        let mut first_line = true;
        for (index, line) in text.lines().enumerate() {
            // Spreadsheets like to start files with a byte-order mark.
            let line = line.trim().trim_start_matches('\u{feff}').trim();
            if line.is_empty() {
                continue;
            }
            let is_first = std::mem::replace(&mut first_line, false);
            match line.parse::<f64>() {
                Ok(t) if t.is_finite() && t >= 0.0 => times.push(t),
                Ok(_) => bail!(
                    "{source}:{}: arrival time `{line}` is not a non-negative number of seconds",
                    index + 1
                ),
                Err(_) if is_first => {}
                Err(_) => bail!(
                    "{source}:{}: `{line}` is not an arrival time in seconds (expected one number per line)",
                    index + 1
                ),
            }
        }
        if times.is_empty() {
            bail!("{source} holds no arrival times (expected one number of seconds per line)");
        }
        Ok(Self::Times(times))
    }

    /// Sorted arrival times in seconds.
    pub fn times(&self, rng: &mut Rng) -> Vec<f64> {
        let mut times: Vec<f64> = match self {
            Self::Constant {
                per_minute,
                minutes,
            } => (0..arrival_count(per_minute * minutes))
                .map(|k| k as f64 * 60.0 / per_minute)
                .collect(),
            Self::Poisson {
                per_minute,
                minutes,
            } => {
                let horizon = minutes * 60.0;
                let mean_gap = 60.0 / per_minute;
                let mut times = Vec::new();
                if mean_gap.is_finite() && mean_gap > 0.0 {
                    let mut t = rng.exponential(mean_gap);
                    while t < horizon {
                        times.push(t);
                        t += rng.exponential(mean_gap);
                    }
                }
                times
            }
            Self::Ramp { from, to, minutes } => {
                // Per second, with Λ(t) = start_rate·t + curvature·t² the expected number of
                // uploads by t; the k-th upload arrives where Λ(t) = k.
                let start_rate = from / 60.0;
                let curvature = (to - from) / 60.0 / (2.0 * minutes * 60.0);
                (0..arrival_count((from + to) / 2.0 * minutes))
                    .map(|k| {
                        let k = k as f64;
                        // The root of curvature·t² + start_rate·t − k written so that it stays
                        // exact for a flat ramp (curvature 0) and avoids cancellation.
                        let root = (start_rate * start_rate + 4.0 * curvature * k)
                            .max(0.0)
                            .sqrt();
                        let denominator = start_rate + root;
                        if denominator > 0.0 {
                            2.0 * k / denominator
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
            Self::Burst { count } => vec![0.0; *count],
            Self::Times(times) => times.clone(),
        };
        times.sort_by(f64::total_cmp);
        times
    }

    /// One line for reports, e.g. "burst of 100 uploads at t = 0".
    pub fn describe(&self) -> String {
        match self {
            Self::Constant {
                per_minute,
                minutes,
            } => {
                format!("{per_minute} uploads/min, evenly spaced, for {minutes} min")
            }
            Self::Poisson {
                per_minute,
                minutes,
            } => {
                format!("Poisson arrivals averaging {per_minute} uploads/min for {minutes} min")
            }
            Self::Ramp { from, to, minutes } => {
                let direction = match to.total_cmp(from) {
                    Ordering::Greater => "rising",
                    Ordering::Less => "falling",
                    Ordering::Equal => "staying",
                };
                format!(
                    "rate {direction} linearly from {from} to {to} uploads/min over {minutes} min"
                )
            }
            Self::Burst { count } => format!("burst of {count} uploads at t = 0"),
            Self::Times(times) if times.is_empty() => "no uploads".to_string(),
            Self::Times(times) => {
                let first = times.iter().copied().fold(f64::INFINITY, f64::min);
                let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!(
                    "{} uploads at given times, t = {first} s to {last} s",
                    times.len()
                )
            }
        }
    }
}

/// How many k = 0, 1, … lie below `expected` uploads.
fn arrival_count(expected: f64) -> usize {
    if expected.is_finite() && expected > 0.0 {
        // The slack keeps a whole number of uploads (600.0) from gaining one through rounding.
        (expected - 1e-9).ceil() as usize
    } else {
        0
    }
}

/// A positive length with its unit, in seconds: `90s`, `4.5s`, `30m`, `30min`, `1.5h`. One
/// grammar for every length the model is given (an arrival pattern's, the simulator's
/// flags). humantime's takes no fractions ("4.5s"), which both need.
pub fn parse_duration(text: &str) -> Option<f64> {
    const UNITS: [(&str, f64); 4] = [("min", 60.0), ("m", 60.0), ("h", 3600.0), ("s", 1.0)];
    let text = text.trim();
    UNITS.iter().find_map(|&(suffix, seconds_per_unit)| {
        let number: f64 = text.strip_suffix(suffix)?.trim().parse().ok()?;
        (number.is_finite() && number > 0.0).then_some(number * seconds_per_unit)
    })
}

/// Splits "10/min:30m" into the rate text and the length in minutes.
fn split_duration<'a>(spec: &str, rest: &'a str) -> anyhow::Result<(&'a str, f64)> {
    let Some((rate, duration)) = rest.split_once(':') else {
        return Ok((rest, DEFAULT_MINUTES));
    };
    let seconds = parse_duration(duration).ok_or_else(|| {
        anyhow!(
            "bad duration `{duration}` in `{spec}`: expected a positive length like 30m, 2h \
             or 90s; accepted forms: {ACCEPTED_FORMS}"
        )
    })?;
    Ok((rate, seconds / 60.0))
}

fn parse_rate(spec: &str, text: &str) -> anyhow::Result<f64> {
    text.trim()
        .strip_suffix("/min")
        .and_then(|number| number.trim().parse::<f64>().ok())
        .filter(|rate| rate.is_finite() && *rate > 0.0)
        .ok_or_else(|| {
            anyhow!(
                "bad rate `{text}` in `{spec}`: expected uploads per minute above 0 \
                 like 10/min; accepted forms: {ACCEPTED_FORMS}"
            )
        })
}

fn parse_ramp(spec: &str, text: &str) -> anyhow::Result<(f64, f64)> {
    let rate = |number: &str| {
        let rate: f64 = number.trim().parse().ok()?;
        (rate.is_finite() && rate >= 0.0).then_some(rate)
    };
    text.trim()
        .strip_suffix("/min")
        .and_then(|range| range.split_once('-'))
        .and_then(|(from, to)| Some((rate(from)?, rate(to)?)))
        .filter(|&(from, to)| from + to > 0.0)
        .ok_or_else(|| {
            anyhow!(
                "bad ramp `{text}` in `{spec}`: expected two rates in uploads per minute \
                 like 0-20/min; accepted forms: {ACCEPTED_FORMS}"
            )
        })
}
