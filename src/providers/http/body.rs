//! A provider's answer read with a byte cap. A hostile or broken provider can answer with
//! an endless body; buffering it whole (`Response::text`) would take the process's memory
//! with it. The body is streamed chunk by chunk and the read stops as soon as it passes
//! the cap, so at most the cap (plus one chunk) is ever held. The request's own timeout
//! (`api.timeout_ms`, set by `Endpoint::request`) covers this read too: reqwest applies it
//! from connecting until the body's end, so a provider that stalls mid-body costs one
//! timeout, not a task.

use reqwest::Response;

/// The most bytes of one answer that are read, and the setting it comes from (named in
/// the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    bytes: usize,
    setting: &'static str,
}

impl Cap {
    /// The answer to a call (a retry): `api.max_answer_bytes`.
    pub(crate) const fn answer(bytes: usize) -> Self {
        Self {
            bytes,
            setting: "api.max_answer_bytes",
        }
    }

    /// A list page: `sync.max_page_bytes`.
    pub(crate) const fn page(bytes: usize) -> Self {
        Self {
            bytes,
            setting: "sync.max_page_bytes",
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The answer passed the cap; the rest was not read.
    #[error("answer larger than {limit} bytes ({setting}), not read further")]
    TooLarge { limit: usize, setting: &'static str },
    /// The connection failed or timed out mid-body.
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
}

/// The body of `response` as text (invalid UTF-8 replaced, as `Response::text` does for
/// UTF-8), failing as soon as it passes `cap`. A `Content-Length` past the cap fails before
/// reading anything; a smaller one is not trusted for the buffer size beyond the cap.
pub(crate) async fn read_capped(mut response: Response, cap: Cap) -> Result<String, BodyError> {
    let too_large = || BodyError::TooLarge {
        limit: cap.bytes,
        setting: cap.setting,
    };
    let announced = response.content_length().unwrap_or(0);
    if announced > cap.bytes as u64 {
        return Err(too_large());
    }
    let mut buffer = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > cap.bytes - buffer.len() {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(match String::from_utf8(buffer) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}
