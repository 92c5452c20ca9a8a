//! Reading an HTTP answer into memory with a cap: for answers that must be small (narinfos, manifests,
//! tokens, error texts, OCI indexes), whatever the peer announces or sends.

use futures_util::StreamExt;

/// Why a capped body could not be read.
#[derive(Debug)]
pub enum CappedError {
    /// Announced or sent more than the cap.
    TooLarge,
    /// The transfer failed.
    Http(reqwest::Error),
}

/// Reads the body of `response`, at most `cap` bytes, handing each chunk to `each` as it arrives;
/// stops (and drops the connection) as soon as the body passes the cap, whatever Content-Length said.
pub async fn read(
    response: reqwest::Response,
    cap: u64,
    mut each: impl FnMut(&[u8]),
) -> Result<Vec<u8>, CappedError> {
    if response.content_length().is_some_and(|n| n > cap) {
        return Err(CappedError::TooLarge);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CappedError::Http)?;
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(CappedError::TooLarge);
        }
        each(&chunk);
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
