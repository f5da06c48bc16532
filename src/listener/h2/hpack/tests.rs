//! Unit tests of the HPACK codec: RFC 7541 Appendix C vectors, error cases, names and
//! allocation, and round trips of the encoder.

use super::*;

fn hex(s: &str) -> Bytes {
    let s: String = s.split_whitespace().collect();
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap());
    bytes.collect::<Vec<u8>>().into()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

type Fields = Vec<(String, String)>;

fn decode(decoder: &mut Decoder, block: Bytes) -> Result<Fields, DecodeError> {
    let mut fields = Vec::new();
    decoder.decode(block, |n, v| fields.push((text(n.as_bytes()), text(v))))?;
    Ok(fields)
}

fn decode_hex(decoder: &mut Decoder, block: &str) -> Result<Fields, DecodeError> {
    decode(decoder, hex(block))
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The dynamic table, newest first, and its size.
fn table(decoder: &Decoder) -> (Fields, usize) {
    let entries = decoder.entries.iter();
    let list = entries
        .map(|e| (text(e.name.as_bytes()), text(&e.value)))
        .collect();
    let computed: usize = decoder.entries.iter().map(|e| e.size).sum();
    assert_eq!(computed, decoder.size);
    (list, decoder.size)
}

/// Index of the first regular (non-pseudo) field in the static table, 1-based.
const FIRST_REGULAR: usize = 15;

#[test]
fn static_table_indices() {
    assert_eq!(STATIC_TABLE.len(), 61);
    assert_eq!(STATIC_TABLE[FIRST_REGULAR - 2].0, Name::Status);
    for (i, (name, _)) in STATIC_TABLE.iter().enumerate().skip(FIRST_REGULAR - 1) {
        let Name::Header(name) = name else {
            panic!("index {} is not regular", i + 1)
        };
        assert_eq!(static_name_index(name), Some(i + 1), "{name}");
    }
    let mut d = Decoder::new(4096);
    let cases = [
        ("82", ":method", "GET"),
        ("90", "accept-encoding", "gzip, deflate"),
    ];
    for (block, name, value) in cases {
        assert_eq!(decode_hex(&mut d, block).unwrap(), fields(&[(name, value)]));
    }
    assert_eq!(
        decode_hex(&mut d, "bd").unwrap(),
        fields(&[("www-authenticate", "")])
    );
    assert_eq!(decode_hex(&mut d, "b6").unwrap(), fields(&[("server", "")]));
}

#[test]
fn c2_field_representations() {
    // C.2.1: literal with indexing.
    let mut d = Decoder::new(4096);
    let block = "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572";
    let expected = fields(&[("custom-key", "custom-header")]);
    assert_eq!(decode_hex(&mut d, block).unwrap(), expected);
    assert_eq!(table(&d), (expected, 55));
    // C.2.2: literal without indexing.
    let mut d = Decoder::new(4096);
    let block = "040c 2f73 616d 706c 652f 7061 7468";
    assert_eq!(
        decode_hex(&mut d, block).unwrap(),
        fields(&[(":path", "/sample/path")])
    );
    assert_eq!(table(&d), (vec![], 0));
    // C.2.3: literal never indexed.
    let block = "1008 7061 7373 776f 7264 0673 6563 7265 74";
    assert_eq!(
        decode_hex(&mut d, block).unwrap(),
        fields(&[("password", "secret")])
    );
    assert_eq!(table(&d), (vec![], 0));
    // C.2.4: indexed.
    assert_eq!(
        decode_hex(&mut d, "82").unwrap(),
        fields(&[(":method", "GET")])
    );
    assert_eq!(table(&d), (vec![], 0));
}

/// The three requests of C.3 and C.4 (the same fields, with and without Huffman).
fn request_examples(blocks: [&str; 3]) {
    let mut d = Decoder::new(4096);
    let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
    let authority = (":authority", "www.example.com");
    let first = [&base[..], &[authority]].concat();
    assert_eq!(decode_hex(&mut d, blocks[0]).unwrap(), fields(&first));
    assert_eq!(table(&d), (fields(&[authority]), 57));

    let cache = ("cache-control", "no-cache");
    let second = [&first[..], &[cache]].concat();
    assert_eq!(decode_hex(&mut d, blocks[1]).unwrap(), fields(&second));
    assert_eq!(table(&d), (fields(&[cache, authority]), 110));

    let custom = ("custom-key", "custom-value");
    let third = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        authority,
        custom,
    ];
    assert_eq!(decode_hex(&mut d, blocks[2]).unwrap(), fields(&third));
    assert_eq!(table(&d), (fields(&[custom, cache, authority]), 164));
}

#[test]
fn c3_requests_without_huffman() {
    request_examples([
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
}

#[test]
fn c4_requests_with_huffman() {
    request_examples([
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ]);
}

/// The three responses of C.5 and C.6, with a 256-byte table and evictions.
fn response_examples(blocks: [&str; 3]) {
    let mut d = Decoder::new(256);
    let private = ("cache-control", "private");
    let date1 = ("date", "Mon, 21 Oct 2013 20:13:21 GMT");
    let location = ("location", "https://www.example.com");
    let first = [(":status", "302"), private, date1, location];
    assert_eq!(decode_hex(&mut d, blocks[0]).unwrap(), fields(&first));
    let expected = [location, date1, private, (":status", "302")];
    assert_eq!(table(&d), (fields(&expected), 222));

    let second = [(":status", "307"), private, date1, location];
    assert_eq!(decode_hex(&mut d, blocks[1]).unwrap(), fields(&second));
    let expected = [(":status", "307"), location, date1, private];
    assert_eq!(table(&d), (fields(&expected), 222));

    let date2 = ("date", "Mon, 21 Oct 2013 20:13:22 GMT");
    let gzip = ("content-encoding", "gzip");
    let cookie = (
        "set-cookie",
        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
    );
    let third = [(":status", "200"), private, date2, location, gzip, cookie];
    assert_eq!(decode_hex(&mut d, blocks[2]).unwrap(), fields(&third));
    assert_eq!(table(&d), (fields(&[cookie, gzip, date2]), 215));
}

#[test]
fn c5_responses_without_huffman() {
    response_examples([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    response_examples([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
}

#[test]
fn index_errors() {
    let mut d = Decoder::new(4096);
    assert_eq!(decode_hex(&mut d, "80"), Err(DecodeError), "indexed 0");
    assert_eq!(
        decode_hex(&mut d, "be"),
        Err(DecodeError),
        "62 with an empty table"
    );
    assert_eq!(
        decode_hex(&mut d, "7e 01 61"),
        Err(DecodeError),
        "name index 62"
    );
    assert_eq!(
        decode_hex(&mut d, "0f 2f 01 61"),
        Err(DecodeError),
        "name index 62, 4-bit"
    );
    let mut d = Decoder::new(4096);
    decode_hex(&mut d, "41 01 61").unwrap();
    assert_eq!(
        decode_hex(&mut d, "be").unwrap(),
        fields(&[(":authority", "a")])
    );
    assert_eq!(
        decode_hex(&mut d, "bf"),
        Err(DecodeError),
        "63 with one entry"
    );
}

#[test]
fn size_updates() {
    let mut d = Decoder::new(4096);
    decode_hex(&mut d, "41 01 61 41 01 62").unwrap();
    assert_eq!(table(&d).1, 2 * 43);
    // Two updates before the first field: shrink to 50 (evicts one), then back to 4096.
    assert_eq!(
        decode_hex(&mut d, "3f13 3fe1 1f 82").unwrap(),
        fields(&[(":method", "GET")])
    );
    assert_eq!(table(&d), (fields(&[(":authority", "b")]), 43));
    assert_eq!(d.max_size, 4096);
    // To zero: empties the table.
    assert_eq!(decode_hex(&mut d, "20").unwrap(), vec![]);
    assert_eq!(table(&d), (vec![], 0));
    decode_hex(&mut d, "41 01 61").unwrap();
    assert_eq!(table(&d), (vec![], 0), "nothing fits in a zero-size table");
    assert_eq!(decode_hex(&mut d, "3fe1 1f").unwrap(), vec![]);
    decode_hex(&mut d, "41 01 61").unwrap();
    assert_eq!(table(&d).1, 43);
}

#[test]
fn size_update_over_the_limit_is_an_error() {
    let mut d = Decoder::new(4096);
    assert_eq!(decode_hex(&mut d, "3fe2 1f"), Err(DecodeError), "4097");
    let mut d = Decoder::new(256);
    assert_eq!(decode_hex(&mut d, "3fe1 01").unwrap(), vec![], "256");
    assert_eq!(decode_hex(&mut d, "3fe2 01"), Err(DecodeError), "257");
}

#[test]
fn size_update_after_a_field_is_an_error() {
    let mut d = Decoder::new(4096);
    assert_eq!(decode_hex(&mut d, "82 20"), Err(DecodeError));
    let mut d = Decoder::new(4096);
    assert_eq!(
        decode_hex(&mut d, "40 01 61 01 62 3f e1 1f"),
        Err(DecodeError)
    );
}

#[test]
fn entry_larger_than_the_table_empties_it() {
    let mut d = Decoder::new(100);
    decode_hex(&mut d, "41 01 61").unwrap();
    assert_eq!(table(&d).1, 43);
    // :authority (10) + 59 bytes + 32 = 101 > 100.
    let block = format!("41 3b {}", "61".repeat(59));
    assert_eq!(decode_hex(&mut d, &block).unwrap().len(), 1);
    assert_eq!(table(&d), (vec![], 0));
    // 58 bytes: exactly 100, evicting nothing else because the table is empty.
    let block = format!("41 3a {}", "61".repeat(58));
    decode_hex(&mut d, &block).unwrap();
    assert_eq!(table(&d).1, 100);
}

#[test]
fn integer_errors() {
    let mut d = Decoder::new(4096);
    assert_eq!(
        decode_hex(&mut d, "ff"),
        Err(DecodeError),
        "truncated after the prefix"
    );
    assert_eq!(
        decode_hex(&mut d, "ff 80"),
        Err(DecodeError),
        "truncated continuation"
    );
    let six = "ff 80 80 80 80 80 00";
    assert_eq!(
        decode_hex(&mut d, six),
        Err(DecodeError),
        "six continuation bytes"
    );
    let big = "ff 80 80 80 80 10";
    assert_eq!(decode_hex(&mut d, big), Err(DecodeError), "above u32::MAX");
    // Five continuation bytes within range decode (then fail as an index).
    let mut cursor = Cursor {
        block: &hex("ff 80 ff ff ff 0f"),
        pos: 1,
    };
    assert_eq!(cursor.int(0xff, 7), Ok(u32::MAX as usize));
    let mut cursor = Cursor {
        block: &hex("1f 9a 0a"),
        pos: 1,
    };
    assert_eq!(cursor.int(0x1f, 5), Ok(1337), "RFC 7541 C.1.2");
}

#[test]
fn string_errors() {
    let mut d = Decoder::new(4096);
    assert_eq!(
        decode_hex(&mut d, "04 05 61 62 63 64"),
        Err(DecodeError),
        "value past block"
    );
    assert_eq!(
        decode_hex(&mut d, "00 03 61 62"),
        Err(DecodeError),
        "name past block"
    );
    assert_eq!(decode_hex(&mut d, "04"), Err(DecodeError), "no value");
    assert_eq!(
        decode_hex(&mut d, "04 7f"),
        Err(DecodeError),
        "truncated length"
    );
    let huge = "04 7f ff ff ff 0f";
    assert_eq!(
        decode_hex(&mut d, huge),
        Err(DecodeError),
        "length 2^28 + 126"
    );
    assert_eq!(
        decode_hex(&mut d, "04 81 ff"),
        Err(DecodeError),
        "Huffman padding 8 bits"
    );
    assert_eq!(
        decode_hex(&mut d, "04 81 05"),
        Err(DecodeError),
        "Huffman padding with 0"
    );
    let eos = "04 84 ff ff ff ff";
    assert_eq!(decode_hex(&mut d, eos), Err(DecodeError), "Huffman EOS");
    assert_eq!(
        decode_hex(&mut d, "04 81 07").unwrap(),
        fields(&[(":path", "0")])
    );
}

#[test]
fn name_classification() {
    let cases: [(&[u8], Option<Name>); 12] = [
        (b":method", Some(Name::Method)),
        (b":scheme", Some(Name::Scheme)),
        (b":authority", Some(Name::Authority)),
        (b":path", Some(Name::Path)),
        (b":protocol", Some(Name::Protocol)),
        (b":status", Some(Name::Status)),
        (b":foo", None),
        (b":", None),
        (b"Content-Type", None),
        (b"", None),
        (b"a b", None),
        (b"x-a", Some(Name::Header(HeaderName::from_static("x-a")))),
    ];
    for (raw, expected) in cases {
        assert_eq!(classify(raw), expected, "{:?}", text(raw));
    }
    assert_eq!(
        classify(b"content-type"),
        Some(Name::Header(header::CONTENT_TYPE))
    );
    assert_eq!(
        classify(b"!#$%&'*+-.^_`|~09az").map(|n| n.as_bytes().len()),
        Some(19)
    );
    assert_eq!(classify(b"a\x00"), None);
    assert_eq!(classify(b"caf\xc3\xa9"), None);
}

#[test]
fn invalid_names_are_decoded_and_indexed() {
    let mut d = Decoder::new(4096);
    let mut names = Vec::new();
    // ":foo: 1" with indexing, "Content-Type: x" without, then index 62.
    let block = hex("40 04 3a66 6f6f 01 31 00 0c 436f 6e74 656e 742d 5479 7065 01 78 be");
    d.decode(block, |n, _| names.push(n.clone())).unwrap();
    let foo = Name::Invalid(Bytes::from_static(b":foo"));
    let upper = Name::Invalid(Bytes::from_static(b"Content-Type"));
    assert_eq!(names, [foo.clone(), upper, foo]);
    assert_eq!(table(&d), (fields(&[(":foo", "1")]), 37));
}

#[test]
fn huffman_names_are_classified() {
    let mut d = Decoder::new(4096);
    let mut names = Vec::new();
    // C.4.3's Huffman-coded "custom-key" as a name, without indexing.
    let block = hex("00 88 25a8 49e9 5ba9 7d7f 01 61");
    d.decode(block, |n, _| names.push(n.clone())).unwrap();
    assert_eq!(names, [Name::Header(HeaderName::from_static("custom-key"))]);
}

#[test]
fn plain_values_are_not_copied() {
    let mut d = Decoder::new(4096);
    let block = hex("04 03 2f 6162 41 01 61");
    let start = block.as_ptr() as usize;
    let mut values = Vec::new();
    d.decode(block.clone(), |_, v| values.push(v.clone()))
        .unwrap();
    assert_eq!(
        values[0].as_ptr() as usize,
        start + 2,
        "a slice of the block"
    );
    let stored = d.entries[0].value.as_ptr();
    assert!(
        !block.as_ptr_range().contains(&stored),
        "indexed values do not pin the block"
    );
    let mut again = Vec::new();
    d.decode(hex("be"), |_, v| again.push(v.as_ptr())).unwrap();
    assert_eq!(
        again,
        [stored],
        "an indexed field borrows the table's value"
    );
}

#[test]
fn random_blocks_do_not_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut d = Decoder::new(256);
    for round in 0..20_000 {
        let len = round % 40;
        let block: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        if d.decode(block.into(), |_, _| {}).is_err() {
            d = Decoder::new(256);
        }
        assert!(d.size <= d.max_size);
    }
}

#[test]
fn encode_status_round_trips() {
    for status in [200, 204, 206, 304, 400, 404, 500, 100, 101, 302, 503, 999] {
        let mut out = Vec::new();
        encode_status(&mut out, status);
        let indexed = [200, 204, 206, 304, 400, 404, 500].contains(&status);
        assert_eq!(out.len(), if indexed { 1 } else { 5 }, "{status}");
        let mut d = Decoder::new(0);
        let decoded = decode(&mut d, out.into()).unwrap();
        assert_eq!(decoded, fields(&[(":status", &status.to_string())]));
    }
    let mut out = Vec::new();
    encode_status(&mut out, 200);
    encode_status(&mut out, 302);
    assert_eq!(out, [0x88, 0x08, 0x03, b'3', b'0', b'2']);
}

#[test]
fn encode_field_round_trips() {
    let long = "v".repeat(300);
    let mut secret = HeaderValue::from_static("secret");
    secret.set_sensitive(true);
    let cases = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
        (header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic")),
        (header::ACCEPT_CHARSET, HeaderValue::from_static("")),
        (
            HeaderName::from_static("x-custom"),
            HeaderValue::from_static("1"),
        ),
        (header::SET_COOKIE, secret.clone()),
        (HeaderName::from_static("x-token"), secret),
        (header::SERVER, HeaderValue::from_str(&long).unwrap()),
        (
            HeaderName::from_bytes(&[b'n'; 200]).unwrap(),
            HeaderValue::from_str(&long).unwrap(),
        ),
    ];
    let mut out = Vec::new();
    for (name, value) in &cases {
        let start = out.len();
        encode_field(&mut out, name, value);
        let kind = if value.is_sensitive() { 0x10 } else { 0x00 };
        assert_eq!(out[start] & 0xf0, kind, "{name}");
    }
    let mut d = Decoder::new(4096);
    let decoded = decode(&mut d, out.into()).unwrap();
    let expected: Fields = cases
        .iter()
        .map(|(n, v)| (n.to_string(), text(v.as_bytes())))
        .collect();
    assert_eq!(decoded, expected);
    assert_eq!(table(&d), (vec![], 0), "nothing is indexed");
}

#[test]
fn encode_field_bytes() {
    let mut out = Vec::new();
    encode_field(
        &mut out,
        &header::CONTENT_LENGTH,
        &HeaderValue::from_static("2"),
    );
    assert_eq!(
        out,
        [0x0f, 0x0d, 0x01, b'2'],
        "name index 28 in a 4-bit prefix"
    );
    out.clear();
    encode_field(
        &mut out,
        &HeaderName::from_static("x-a"),
        &HeaderValue::from_static("b"),
    );
    assert_eq!(out, [0x00, 0x03, b'x', b'-', b'a', 0x01, b'b']);
}
