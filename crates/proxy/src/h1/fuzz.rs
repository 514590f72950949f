//! Property tests of the codec (fuzzing; 256 cases each by default, as `./test.sh` runs them;
//! more: `PROPTEST_CASES=100000 cargo test -p infergate-proxy --lib h1::fuzz`).

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use proptest::prelude::*;

use super::codec::*;

/// What reading a whole response gives: status, headers, body bytes, trailers and the bytes
/// left after it; or the first error.
type Outcome = Result<(u16, HeaderMap, Vec<u8>, Option<HeaderMap>, Bytes), ParseError>;

/// Reads one response from `pieces`, each the bytes of one read; the end of the pieces is the
/// close of the connection.
fn read(pieces: &[&[u8]], req: RequestKind) -> Outcome {
    let mut buf = BytesMut::new();
    let mut next = pieces.iter();
    let head = loop {
        if let Some(h) = parse_response_head(&mut buf, req, &mut HeaderMap::new())? {
            break h;
        }
        match next.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return Err(ParseError::Incomplete),
        }
    };
    let mut d = Decoder::new(head.framing);
    let (mut body, mut trailers) = (Vec::new(), None);
    let mut eof = false;
    loop {
        match d.decode(&mut buf, eof)? {
            Decoded::Data(b) => {
                assert!(!b.is_empty(), "no empty data frames");
                body.extend_from_slice(&b);
            }
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => break,
            Decoded::NeedMore => match next.next() {
                Some(p) => buf.extend_from_slice(p),
                None => eof = true,
            },
        }
    }
    assert!(d.is_end());
    let mut rest = buf;
    for p in next {
        rest.extend_from_slice(p);
    }
    Ok((
        head.status.as_u16(),
        head.headers,
        body,
        trailers,
        rest.freeze(),
    ))
}

/// `bytes` cut at `cuts` (positions, any order, repeats allowed).
fn cut<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// A valid response: a status, some headers, and a body framed by length, chunks (with
/// extensions and trailers) or the close.
fn response() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let status = prop::sample::select(vec![200u16, 201, 202, 400, 404, 429, 500, 503]);
    let headers = prop::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,20}"), 0..6);
    let chunks = prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..6);
    let framing = 0u8..3;
    let ext = proptest::option::of(";[a-z]{1,6}(=[a-z0-9]{1,6})?");
    let trailers = prop::collection::vec(("x-t-[a-z]{1,6}", "[a-z0-9]{0,10}"), 0..3);
    let interim = any::<bool>();
    (status, headers, chunks, framing, ext, trailers, interim).prop_map(
        |(status, headers, chunks, framing, ext, trailers, interim)| {
            let mut r = Vec::new();
            if interim {
                r.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            r.extend_from_slice(format!("HTTP/1.1 {status} Whatever\r\n").as_bytes());
            for (k, v) in &headers {
                r.extend_from_slice(format!("{k}: {}\r\n", v.trim()).as_bytes());
            }
            let body: Vec<u8> = chunks.concat();
            match framing {
                0 => {
                    r.extend_from_slice(
                        format!("content-length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    r.extend_from_slice(&body);
                }
                1 => {
                    r.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                    for c in &chunks {
                        r.extend_from_slice(
                            format!("{:x}{}\r\n", c.len(), ext.as_deref().unwrap_or("")).as_bytes(),
                        );
                        r.extend_from_slice(c);
                        r.extend_from_slice(b"\r\n");
                    }
                    r.extend_from_slice(b"0\r\n");
                    for (k, v) in &trailers {
                        r.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                    }
                    r.extend_from_slice(b"\r\n");
                }
                _ => {
                    r.extend_from_slice(b"\r\n");
                    r.extend_from_slice(&body);
                }
            }
            (r, body)
        },
    )
}

proptest! {
    /// Whatever a pod sends, the parser and the decoders return (an answer or an error) and
    /// never panic, read whole or in pieces, after any request kind.
    #[test]
    fn arbitrary_bytes_never_panic(
        prefix in prop::sample::select(vec![
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            b"HTTP/1.0 100 Continue\r\n\r\n",
        ]),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        req in prop::sample::select(vec![RequestKind::Other, RequestKind::Head, RequestKind::Connect]),
    ) {
        let mut input = prefix.to_vec();
        input.extend_from_slice(&bytes);
        let whole = read(&[&input], req);
        let pieces = read(&cut(&input, &cuts), req);
        // Small inputs stay far from the head size limit, the one rule that depends on how
        // much is buffered at once: the outcome does not depend on the reads.
        prop_assert_eq!(whole, pieces);
    }

    /// Any split of a valid response into reads gives what one read gives.
    #[test]
    fn any_split_of_a_valid_response_reads_the_same(
        (resp, body) in response(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = read(&[&resp], RequestKind::Other);
        let (_, _, got, _, rest) = whole.clone().expect("a valid response reads");
        prop_assert_eq!(got, body);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(read(&cut(&resp, &cuts), RequestKind::Other), whole);
    }

    /// A body chunked by the request encoder decodes to the same bytes, however it is split.
    #[test]
    fn chunked_encode_then_decode_round_trips(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for f in &frames {
            push_chunk_size(&mut wire, f.len());
            wire.extend_from_slice(f);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(LAST_CHUNK);
        let (_, _, body, trailers, rest) = read(&cut(&wire, &cuts), RequestKind::Other).unwrap();
        prop_assert_eq!(body, frames.concat());
        prop_assert!(trailers.is_none() && rest.is_empty());
    }
}
