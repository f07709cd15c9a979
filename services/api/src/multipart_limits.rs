//! A bound on what actix-multipart holds in memory while it parses an upload. That parser
//! keeps the preamble, boundary lines and part headers in memory until their terminator
//! arrives, with no limit (actix/actix-web#2810), and counts none of it towards the size
//! cap: one request whose framing never ends could hold the proxy's whole body limit.
//!
//! A second parser watching the framing would have to agree with actix's on every byte, and
//! did not (review 3, N1: a first line `--<boundary>X`, a `;` inside a quoted parameter).
//! So nothing here parses: the body counts the bytes it hands the parser, the handler counts
//! the bytes the parser hands out as field content ([`BodyBudget::handed_out`]), and the
//! body fails once the parser holds more than [`MAX_HELD`] of the difference, whatever it
//! is doing with them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

/// Most bytes read from the body and not (yet) handed out as field content: the framing
/// of the whole form (a real client sends a few hundred bytes) plus what the parser keeps
/// back while it looks for the next delimiter.
pub const MAX_HELD: u64 = 64 * 1024;

/// The two counts, shared by the body (which actix owns) and the handler.
#[derive(Debug, Default)]
pub struct BodyBudget {
    pulled: AtomicU64,
    handed_out: AtomicU64,
}

impl BodyBudget {
    /// Called by the handler for every chunk of field content it receives.
    pub fn handed_out(&self, bytes: usize) {
        self.handed_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// What the parser holds: read from the body and not handed out.
    fn held(&self) -> u64 {
        let pulled = self.pulled.load(Ordering::Relaxed);
        pulled.saturating_sub(self.handed_out.load(Ordering::Relaxed))
    }

    /// Whether the body was cut off for holding too much (its error is
    /// [`PayloadError::Overflow`], which the payload itself never gives here).
    pub fn exceeded(&self) -> bool {
        self.held() > MAX_HELD
    }
}

/// Largest piece of the body handed to the parser at once: the server's own chunks reach
/// 128 KiB, more than [`MAX_HELD`] before the parser has had a chance to hand any out.
const PIECE: usize = 16 * 1024;

/// A request body whose reader may hold at most [`MAX_HELD`] of it, plus one [`PIECE`].
///
/// actix-multipart pulls every chunk that is ready before it parses any (`poll_stream`,
/// on every poll of a field), and hands content out in pieces that end at each `\r--`: a
/// fast client could fill its buffer far faster than it empties it, with content alone.
/// So this body lets the parser read only when it is stuck: after a chunk, and while the
/// handler keeps receiving content, it answers `Pending` (with the waker woken, so the
/// parser is polled again at once and parses what it has). Each deferral needs content
/// handed out since the last, so the parser always gets the data it waits for.
pub struct BudgetedBody<S> {
    inner: S,
    budget: Arc<BodyBudget>,
    /// The rest of the server's last chunk, handed on [`PIECE`] by piece.
    rest: Bytes,
    just_pulled: bool,
    /// `handed_out` when last looked at: a change means the parser still has content.
    handed_out_seen: u64,
}

impl<S> BudgetedBody<S> {
    /// The body, and the budget the handler reports field content to.
    pub fn new(inner: S) -> (Self, Arc<BodyBudget>) {
        let budget = Arc::new(BodyBudget::default());
        let body = Self {
            inner,
            budget: budget.clone(),
            rest: Bytes::new(),
            just_pulled: false,
            handed_out_seen: 0,
        };
        (body, budget)
    }
}

impl<S> Stream for BudgetedBody<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let handed_out = self.budget.handed_out.load(Ordering::Relaxed);
        let parser_has_content = handed_out != self.handed_out_seen;
        if std::mem::take(&mut self.just_pulled) || parser_has_content {
            self.handed_out_seen = handed_out;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.budget.exceeded() {
            return Poll::Ready(Some(Err(PayloadError::Overflow)));
        }
        if self.rest.is_empty() {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.rest = chunk,
                other => return other,
            }
        }
        let size = self.rest.len().min(PIECE);
        let piece = self.rest.split_to(size);
        self.budget
            .pulled
            .fetch_add(piece.len() as u64, Ordering::Relaxed);
        self.just_pulled = true;
        Poll::Ready(Some(Ok(piece)))
    }
}

#[cfg(test)]
mod tests {
    use actix_multipart::{Multipart, MultipartError};
    use actix_web::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
    use futures_util::TryStreamExt;

    use super::*;

    /// As large as the server's own chunks get.
    const CHUNK: usize = 128 * 1024;

    /// Parses `body` (sent in chunks of [`CHUNK`]) as the handler does, reporting content;
    /// the content received, or the error, with how many bytes were read from the body.
    async fn parse(content_type: &str, body: Vec<u8>) -> (Result<usize, MultipartError>, u64) {
        let chunks: Vec<Result<Bytes, PayloadError>> = body
            .chunks(CHUNK)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let (body, budget) = BudgetedBody::new(futures_util::stream::iter(chunks));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        let mut form = Multipart::new(&headers, body);
        let result = async {
            let mut content = 0;
            while let Some(mut field) = form.try_next().await? {
                while let Some(chunk) = field.try_next().await? {
                    budget.handed_out(chunk.len());
                    content += chunk.len();
                }
            }
            Ok(content)
        }
        .await;
        (result, budget.pulled.load(Ordering::Relaxed))
    }

    fn part(boundary: &str, name: &str, content: &[u8]) -> Vec<u8> {
        [
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
            content,
            b"\r\n",
        ]
        .concat()
    }

    fn is_cut_off(result: &Result<usize, MultipartError>) -> bool {
        matches!(result, Err(MultipartError::Payload(PayloadError::Overflow)))
    }

    #[actix_web::test]
    async fn a_form_of_any_size_passes_and_its_content_is_all_handed_out() {
        // Content full of near-delimiters, which the parser hands out in small pieces.
        let video: Vec<u8> = b"\r\n-\r\n\r\n--X".repeat(30_000);
        let body = [
            part("XyZ", "title", b"Mi jugada"),
            part("XyZ", "video_file", &video),
            b"--XyZ--\r\n".to_vec(),
        ]
        .concat();
        let (result, _) = parse("multipart/form-data; boundary=XyZ", body).await;
        assert_eq!(result.unwrap(), "Mi jugada".len() + video.len());
    }

    /// Review 3, N1 (a) and (b), an endless part header, and a preamble with no boundary:
    /// each is cut off having read at most the budget and one piece.
    #[actix_web::test]
    async fn framing_that_never_ends_is_cut_off_whatever_the_parser_makes_of_it() {
        let endless = vec![b'a'; 4 << 20];
        let cases: [(&str, &str, Vec<u8>); 4] = [
            (
                "a first line that only starts with the boundary",
                "multipart/form-data; boundary=real",
                [b"--realX\r\n\r\n".as_slice(), &endless].concat(),
            ),
            (
                "a boundary inside a quoted parameter",
                "multipart/form-data; charset=\"x;boundary=evil\"; boundary=real",
                [b"--evil\r\nX: y\r\n\r\n".as_slice(), &endless].concat(),
            ),
            (
                "a part header that never ends",
                "multipart/form-data; boundary=real",
                [
                    b"--real\r\nContent-Disposition: form-data; name=\"x\"\r\nX-Pad: ".as_slice(),
                    &endless,
                ]
                .concat(),
            ),
            (
                "a preamble that never reaches the boundary",
                "multipart/form-data; boundary=real",
                endless.clone(),
            ),
        ];
        for (case, content_type, body) in cases {
            let (result, pulled) = parse(content_type, body).await;
            assert!(is_cut_off(&result), "{case}: {result:?}");
            assert!(
                pulled <= MAX_HELD + PIECE as u64,
                "{case}: read {pulled} bytes"
            );
        }
    }

    #[actix_web::test]
    async fn thousands_of_tiny_parts_are_cut_off() {
        let body: Vec<u8> = (0..10_000)
            .flat_map(|i| part("XyZ", &format!("f{i}"), b"v"))
            .collect();
        let (result, _) = parse("multipart/form-data; boundary=XyZ", body).await;
        assert!(is_cut_off(&result), "{result:?}");
    }
}
