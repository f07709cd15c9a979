//! A guard on a multipart body's framing, in front of actix-multipart. That parser holds
//! part headers (and the preamble, and the rest of a boundary line) in memory until their
//! terminator arrives, with no limit (actix/actix-web#2810), and counts none of it towards
//! an upload's size cap: one request whose part header never ends could hold up to the
//! proxy's whole body limit in memory. This stream adaptor watches the bytes go by and
//! fails the body once any of those runs passes [`MAX_FRAMING_RUN`], or once it has more
//! than [`MAX_PARTS`] parts.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use memchr::memmem;

/// Longest run of preamble, boundary line and part headers accepted before a part's
/// content starts (a real client sends a few hundred bytes).
pub const MAX_FRAMING_RUN: usize = 16 * 1024;
/// Most parts accepted in one upload (the form has two fields).
pub const MAX_PARTS: usize = 16;

/// Why a body was cut off; carried to the handler through [`PayloadError::Overflow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingViolation {
    RunTooLong,
    TooManyParts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter (actix reads the preamble line by line): bytes so far.
    Preamble(usize),
    /// Just past a delimiter: "--" next closes the body, anything else opens a part.
    AfterDelimiter,
    /// In a part's headers, from the delimiter on: bytes since the delimiter.
    Framing(usize),
    /// In a part's content, looking for the next delimiter.
    Content,
    /// After the closing delimiter: nothing more is parsed.
    Done,
}

/// The byte-level watcher, kept apart from the stream so it can be tested on plain data.
#[derive(Debug)]
pub struct FramingWatch {
    /// "\r\n--" + boundary: what ends a part's content.
    delimiter: Vec<u8>,
    state: State,
    /// The tail of what was seen, so a terminator split across chunks is still found.
    carry: Vec<u8>,
    parts: usize,
    violation: Option<FramingViolation>,
}

impl FramingWatch {
    pub fn new(boundary: &str) -> Self {
        Self {
            delimiter: [b"\r\n--", boundary.as_bytes()].concat(),
            // The body may open with the delimiter minus its CRLF: pretend one came first.
            state: State::Preamble(0),
            carry: b"\r\n".to_vec(),
            parts: 0,
            violation: None,
        }
    }

    pub fn violation(&self) -> Option<FramingViolation> {
        self.violation
    }

    /// Looks at the next chunk of the body; `Err` once the framing is out of bounds.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), FramingViolation> {
        if let Some(violation) = self.violation {
            return Err(violation);
        }
        if self.skips_content(chunk) {
            return Ok(());
        }
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(chunk);
        let mut at = 0;
        let result = loop {
            match self.state {
                State::Done => break Ok(()),
                State::Preamble(seen) => match memmem::find(&data[at..], &self.delimiter) {
                    Some(found) if seen + found <= MAX_FRAMING_RUN => {
                        at += found + self.delimiter.len();
                        self.state = State::AfterDelimiter;
                    }
                    Some(_) => break Err(FramingViolation::RunTooLong),
                    None => {
                        let seen = seen + (data.len() - at);
                        if seen > MAX_FRAMING_RUN {
                            break Err(FramingViolation::RunTooLong);
                        }
                        let keep = (self.delimiter.len() - 1).min(data.len() - at);
                        self.carry = data[data.len() - keep..].to_vec();
                        self.state = State::Preamble(seen - keep);
                        break Ok(());
                    }
                },
                State::Content => match memmem::find(&data[at..], &self.delimiter) {
                    Some(found) => {
                        at += found + self.delimiter.len();
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let keep = (self.delimiter.len() - 1).min(data.len() - at);
                        self.carry = data[data.len() - keep..].to_vec();
                        break Ok(());
                    }
                },
                State::AfterDelimiter => {
                    let rest = &data[at..];
                    if rest.len() < 2 {
                        self.carry = rest.to_vec();
                        break Ok(());
                    }
                    if rest.starts_with(b"--") {
                        self.state = State::Done; // the closing delimiter
                        continue;
                    }
                    self.parts += 1;
                    if self.parts > MAX_PARTS {
                        break Err(FramingViolation::TooManyParts);
                    }
                    self.state = State::Framing(0);
                }
                State::Framing(seen) => {
                    match memmem::find(&data[at..], b"\r\n\r\n") {
                        Some(found) if seen + found <= MAX_FRAMING_RUN => {
                            at += found + 4;
                            self.state = State::Content;
                        }
                        Some(_) => break Err(FramingViolation::RunTooLong),
                        None => {
                            let seen = seen + (data.len() - at);
                            if seen > MAX_FRAMING_RUN {
                                break Err(FramingViolation::RunTooLong);
                            }
                            // Keep the tail; what it re-counts next time errs on the safe side.
                            let keep = 3.min(data.len() - at);
                            self.carry = data[data.len() - keep..].to_vec();
                            self.state = State::Framing(seen - keep);
                            break Ok(());
                        }
                    }
                }
            }
        };
        if let Err(violation) = result {
            self.violation = Some(violation);
        }
        result
    }
}

impl FramingWatch {
    /// The common case, without copying the chunk: inside a part's content, a chunk in
    /// which no delimiter starts (nor straddles the previous one) only moves the tail on.
    fn skips_content(&mut self, chunk: &[u8]) -> bool {
        if self.state != State::Content {
            return false;
        }
        let keep = self.delimiter.len() - 1;
        let mut seam = self.carry.clone();
        seam.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        if memmem::find(&seam, &self.delimiter).is_some()
            || memmem::find(chunk, &self.delimiter).is_some()
        {
            return false;
        }
        if chunk.len() >= keep {
            self.carry = chunk[chunk.len() - keep..].to_vec();
        } else {
            self.carry.extend_from_slice(chunk);
            let excess = self.carry.len().saturating_sub(keep);
            self.carry.drain(..excess);
        }
        true
    }
}

/// A request body passed through a [`FramingWatch`]; the first violation ends it with
/// [`PayloadError::Overflow`].
pub struct WatchedBody<S> {
    inner: S,
    watch: std::sync::Arc<std::sync::Mutex<FramingWatch>>,
}

impl<S> WatchedBody<S> {
    /// The body, and a handle to ask afterwards why it was cut off.
    pub fn new(inner: S, boundary: &str) -> (Self, std::sync::Arc<std::sync::Mutex<FramingWatch>>) {
        let watch = std::sync::Arc::new(std::sync::Mutex::new(FramingWatch::new(boundary)));
        (
            Self {
                inner,
                watch: watch.clone(),
            },
            watch,
        )
    }
}

impl<S> Stream for WatchedBody<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            if watch.feed(chunk).is_err() {
                return Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
        }
        polled
    }
}

/// The `boundary` parameter of a multipart Content-Type, if there is one.
pub fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDARY: &str = "XyZ";

    fn part(name: &str, content: &str) -> String {
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{content}\r\n"
        )
    }

    /// Feeds `body` in chunks of every size from 1 byte up, as the network may split it.
    fn check(body: &[u8]) -> Result<(), FramingViolation> {
        let mut outcome = None;
        for size in [1, 2, 3, 7, 64, 4096, body.len().max(1)] {
            let mut watch = FramingWatch::new(BOUNDARY);
            let result = body.chunks(size).try_for_each(|c| watch.feed(c));
            assert!(
                outcome.is_none_or(|o| o == result),
                "chunks of {size} disagree"
            );
            outcome = Some(result);
        }
        outcome.unwrap()
    }

    #[test]
    fn ordinary_forms_pass_whatever_their_content() {
        let video = "\r\n\r\n".repeat(20_000) + &"x".repeat(50_000);
        let body = part("title", "Mi jugada")
            + &part("video_file", &video)
            + &format!("--{BOUNDARY}--\r\n");
        assert_eq!(check(body.as_bytes()), Ok(()));
        // After the closing delimiter nothing is parsed, so nothing is limited.
        let epilogue = body + &"y".repeat(100_000);
        assert_eq!(check(epilogue.as_bytes()), Ok(()));
    }

    #[test]
    fn a_part_header_that_never_ends_is_cut_off() {
        let body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"; x=\"{}",
            "a".repeat(MAX_FRAMING_RUN)
        );
        assert_eq!(check(body.as_bytes()), Err(FramingViolation::RunTooLong));
        let long_header_then_end = format!(
            "--{BOUNDARY}\r\nX: {}\r\n\r\nshort",
            "a".repeat(MAX_FRAMING_RUN)
        );
        assert_eq!(
            check(long_header_then_end.as_bytes()),
            Err(FramingViolation::RunTooLong)
        );
        let preamble = "p".repeat(MAX_FRAMING_RUN + 10) + &part("title", "x");
        assert_eq!(
            check(preamble.as_bytes()),
            Err(FramingViolation::RunTooLong)
        );
        let short_preamble = "hola\r\n".to_owned() + &part("title", "x");
        assert_eq!(check(short_preamble.as_bytes()), Ok(()));
    }

    #[test]
    fn too_many_parts_are_refused() {
        let body: String = (0..=MAX_PARTS)
            .map(|i| part(&format!("f{i}"), ""))
            .collect();
        assert_eq!(check(body.as_bytes()), Err(FramingViolation::TooManyParts));
        let enough: String = (0..MAX_PARTS)
            .map(|i| part(&format!("f{i}"), ""))
            .collect::<String>()
            + &format!("--{BOUNDARY}--\r\n");
        assert_eq!(check(enough.as_bytes()), Ok(()));
    }

    #[test]
    fn the_boundary_comes_from_the_content_type() {
        assert_eq!(
            boundary_of("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary_of("multipart/form-data; charset=utf-8; BOUNDARY=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary_of("multipart/form-data"), None);
        assert_eq!(boundary_of("multipart/form-data; boundary="), None);
    }
}
