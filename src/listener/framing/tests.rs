use super::*;

/// Feeds `parts` one after another and returns every event.
fn events(parts: &[&[u8]]) -> Vec<Event> {
    let mut framing = Framing::default();
    let mut seen = Vec::new();
    for part in parts {
        framing.feed(part, &mut |e| seen.push(e));
    }
    seen
}

const CLEAN: Event = Event::HeadEnded {
    ambiguous: false,
    body: false,
};
const CLEAN_BODY: Event = Event::HeadEnded {
    ambiguous: false,
    body: true,
};
const AMBIGUOUS: Event = Event::HeadEnded {
    ambiguous: true,
    body: true,
};

#[test]
fn a_plain_get_is_one_clean_head() {
    assert_eq!(
        events(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]),
        [Event::HeadStarted, CLEAN]
    );
}

#[test]
fn length_beside_encoding_or_twice_is_ambiguous() {
    assert_eq!(
        events(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]),
        [Event::HeadStarted, AMBIGUOUS, Event::BodyEnded]
    );
    assert_eq!(
        events(&[b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 5\r\ncontent-length: 5\r\n\r\nhello"]),
        [Event::HeadStarted, AMBIGUOUS, Event::BodyEnded]
    );
}

#[test]
fn a_header_named_like_a_prefix_does_not_count() {
    assert_eq!(
        events(&[b"GET / HTTP/1.1\r\nContent-Lengthy: 5\r\nContent-Length: 0\r\n\r\n"]),
        [Event::HeadStarted, CLEAN_BODY, Event::BodyEnded]
    );
}

#[test]
fn a_head_split_across_reads_is_scanned_whole() {
    assert_eq!(
        events(&[
            b"POST / HTTP/1.1\r\nContent-Len",
            b"gth: 5\r\nContent-Length: 5\r",
            b"\n\r",
            b"\nhel",
            b"lo"
        ]),
        [Event::HeadStarted, AMBIGUOUS, Event::BodyEnded]
    );
}

#[test]
fn pipelined_heads_after_bodies_are_each_scanned() {
    let stream: &[u8] = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /b HTTP/1.1\r\nContent-Length: 11\r\n\r\nContent-Len\
        POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n\
        POST /d HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
    assert_eq!(
        events(&[stream]),
        [
            Event::HeadStarted,
            CLEAN,
            Event::HeadStarted,
            CLEAN_BODY,
            Event::BodyEnded,
            Event::HeadStarted,
            CLEAN_BODY,
            Event::BodyEnded,
            Event::HeadStarted,
            AMBIGUOUS,
            Event::BodyEnded,
        ]
    );
}

#[test]
fn body_bytes_that_look_like_headers_are_not_a_head() {
    // The body holds a whole fake head; it must not be scanned as one.
    let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
    let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
    let seen = events(&[head.as_bytes(), &body[..10], &body[10..]]);
    assert_eq!(seen, [Event::HeadStarted, CLEAN_BODY, Event::BodyEnded]);
}

#[test]
fn chunked_framing_split_anywhere_stays_in_sync() {
    let stream: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    for split in 1..stream.len() {
        let seen = events(&[&stream[..split], &stream[split..]]);
        assert_eq!(
            seen,
            [
                Event::HeadStarted,
                CLEAN_BODY,
                Event::BodyEnded,
                Event::HeadStarted,
                CLEAN
            ],
            "split at {split}"
        );
    }
}

#[test]
fn the_http2_preface_even_split_stops_scanning() {
    let seen = events(&[
        b"PRI * HTTP/2.0\r",
        b"\n\r\nSM\r\n\r\n",
        b"\x00\x00\x12\x04",
    ]);
    assert_eq!(seen, [Event::HeadStarted, Event::Http2]);
}

#[test]
fn bare_lf_heads_are_scanned_too() {
    assert_eq!(
        events(&[b"GET / HTTP/1.1\nContent-Length: 1\nContent-Length: 1\n\nx"]),
        [Event::HeadStarted, AMBIGUOUS, Event::BodyEnded]
    );
}

#[test]
fn blank_lines_between_requests_do_not_start_a_head() {
    assert_eq!(
        events(&[
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\n",
            b"GET / HTTP/1.1\r\n\r\n"
        ]),
        [Event::HeadStarted, CLEAN, Event::HeadStarted, CLEAN]
    );
}

#[test]
fn transfer_encoding_other_than_one_plain_chunked_is_ambiguous() {
    let verdict = |head: &[u8]| events(&[head])[1];
    assert_eq!(
        verdict(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
        CLEAN_BODY
    );
    assert_eq!(
        verdict(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        AMBIGUOUS
    );
    assert_eq!(
        verdict(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        AMBIGUOUS
    );
    assert_eq!(
        verdict(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
        AMBIGUOUS
    );
}
