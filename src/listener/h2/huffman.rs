//! The HPACK Huffman code (RFC 7541 section 5.2 and Appendix B), decode side only: the
//! server never Huffman-codes what it sends. The code is canonical, so the table below holds
//! only the 257 code lengths (256 byte values and EOS); the codes, the code tree and a
//! nibble-at-a-time decoding table are derived from them at compile time. Decoding enforces
//! the section 5.2 rules: no EOS symbol inside a string, and padding of at most 7 bits that
//! is a prefix of EOS (all ones).

/// Bit length of each symbol's code, symbols 0..=255 then EOS (256): RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '..'/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'..'?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'..'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'..'_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'..'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'..0x7f
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

/// The EOS symbol, which must never appear in a decoded string.
const EOS: u16 = 256;
/// The longest code, in bits (EOS).
const MAX_LEN: usize = 30;
/// Internal nodes of the code tree: a complete prefix code over 257 symbols has 256.
const NODES: usize = 256;
/// Marks a tree child (or nothing else) as a leaf holding the symbol in the low bits.
const LEAF: u16 = 0x8000;

/// The canonical codes, right-aligned in a `u32`: shorter codes first, then by symbol.
const CODES: [u32; 257] = canonical_codes();

/// Assigns canonical codes: per length, the first code follows the last code of the
/// previous length (plus one, shifted), and symbols of one length take consecutive codes.
const fn canonical_codes() -> [u32; 257] {
    let mut count = [0u32; MAX_LEN + 1];
    let mut sym = 0;
    while sym < 257 {
        let len = CODE_LENGTHS[sym] as usize;
        assert!(len >= 1 && len <= MAX_LEN);
        count[len] += 1;
        sym += 1;
    }
    let mut next = [0u32; MAX_LEN + 1];
    let mut code = 0u32;
    let mut len = 1;
    while len <= MAX_LEN {
        code = (code + count[len - 1]) << 1;
        next[len] = code;
        len += 1;
    }
    let mut codes = [0u32; 257];
    let mut sym = 0;
    while sym < 257 {
        let len = CODE_LENGTHS[sym] as usize;
        codes[sym] = next[len];
        next[len] += 1;
        sym += 1;
    }
    codes
}

/// The code tree: `children[node][bit]` is an internal node id or `LEAF | symbol`; node 0
/// is the root. `depth` and `all_ones` describe each internal node's path from the root.
struct Tree {
    /// Each internal node's two children.
    children: [[u16; 2]; NODES],
    /// Bits from the root to the node.
    depth: [u8; NODES],
    /// Whether every bit on the path from the root is 1 (a prefix of EOS).
    all_ones: [bool; NODES],
}

/// Builds the code tree from `CODES`, checking at compile time that the code is a complete
/// prefix code (no code is a prefix of another, every child slot is used).
const fn build_tree() -> Tree {
    let mut tree = Tree {
        children: [[0; 2]; NODES],
        depth: [0; NODES],
        all_ones: [false; NODES],
    };
    tree.all_ones[0] = true;
    let mut free = 1usize;
    let mut sym = 0;
    while sym < 257 {
        let (code, len) = (CODES[sym], CODE_LENGTHS[sym] as u32);
        let mut node = 0usize;
        let mut shift = len - 1;
        while shift > 0 {
            let bit = ((code >> shift) & 1) as usize;
            if tree.children[node][bit] == 0 {
                assert!(free < NODES);
                tree.children[node][bit] = free as u16;
                tree.depth[free] = tree.depth[node] + 1;
                tree.all_ones[free] = tree.all_ones[node] && bit == 1;
                free += 1;
            }
            assert!(tree.children[node][bit] & LEAF == 0);
            node = tree.children[node][bit] as usize;
            shift -= 1;
        }
        let bit = (code & 1) as usize;
        assert!(tree.children[node][bit] == 0);
        tree.children[node][bit] = LEAF | sym as u16;
        sym += 1;
    }
    assert!(free == NODES);
    tree
}

/// `Step::flags`: the step completed a symbol, `Step::symbol`.
const EMIT: u8 = 1;
/// `Step::flags`: the step reached EOS, an error.
const FAIL: u8 = 2;

/// What feeding four bits to the decoder in one tree state does.
#[derive(Clone, Copy)]
struct Step {
    /// The state (internal node) after the four bits.
    next: u8,
    /// The completed symbol when `flags` has `EMIT`.
    symbol: u8,
    /// `EMIT` and/or `FAIL`.
    flags: u8,
}

/// The decoding tables: a step per (state, nibble), and which states may end a string.
struct Tables {
    /// `steps[state][nibble]`.
    steps: [[Step; 16]; NODES],
    /// Whether input may end in this state: at the root, or within at most 7 one bits.
    accept: [bool; NODES],
}

/// Walks four bits from one state. With codes of at least 5 bits, four bits complete at
/// most one symbol (checked at compile time).
const fn step(tree: &Tree, state: usize, nibble: usize) -> Step {
    let mut out = Step {
        next: 0,
        symbol: 0,
        flags: 0,
    };
    let mut node = state;
    let mut shift = 4;
    while shift > 0 {
        shift -= 1;
        let child = tree.children[node][(nibble >> shift) & 1];
        if child & LEAF == 0 {
            node = child as usize;
            continue;
        }
        node = 0;
        if child & !LEAF == EOS {
            out.flags |= FAIL;
            break;
        }
        assert!(out.flags & EMIT == 0);
        out.flags |= EMIT;
        out.symbol = (child & !LEAF) as u8;
    }
    out.next = node as u8;
    out
}

/// Builds the nibble-at-a-time decoding tables from the code tree.
const fn build_tables() -> Tables {
    let tree = build_tree();
    let empty = Step {
        next: 0,
        symbol: 0,
        flags: 0,
    };
    let mut tables = Tables {
        steps: [[empty; 16]; NODES],
        accept: [false; NODES],
    };
    let mut state = 0;
    while state < NODES {
        let mut nibble = 0;
        while nibble < 16 {
            tables.steps[state][nibble] = step(&tree, state, nibble);
            nibble += 1;
        }
        tables.accept[state] = tree.all_ones[state] && tree.depth[state] <= 7;
        state += 1;
    }
    tables
}

/// The decoding tables, built at compile time.
static TABLES: Tables = build_tables();

/// A Huffman-coded string that RFC 7541 section 5.2 forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InvalidHuffman;

/// Decodes the Huffman-coded `src`, appending the bytes to `out`.
pub(super) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidHuffman> {
    // Codes are at least 5 bits: at most 8 symbols per 5 input bytes.
    out.reserve(src.len() * 8 / 5 + 1);
    let mut state = 0u8;
    for &byte in src {
        state = feed(state, byte >> 4, out)?;
        state = feed(state, byte & 0x0f, out)?;
    }
    if TABLES.accept[usize::from(state)] {
        Ok(())
    } else {
        Err(InvalidHuffman)
    }
}

/// Feeds one nibble in `state`, pushing a completed symbol; returns the next state.
#[inline(always)]
fn feed(state: u8, nibble: u8, out: &mut Vec<u8>) -> Result<u8, InvalidHuffman> {
    let step = TABLES.steps[usize::from(state)][usize::from(nibble)];
    if step.flags & FAIL != 0 {
        return Err(InvalidHuffman);
    }
    if step.flags & EMIT != 0 {
        out.push(step.symbol);
    }
    Ok(step.next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test-only encoder from the derived codes, padding with the EOS prefix.
    fn encode(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in src {
            let len = u32::from(CODE_LENGTHS[usize::from(b)]);
            acc = (acc << len) | u64::from(CODES[usize::from(b)]);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            let pad = 8 - bits;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    fn decoded(src: &[u8]) -> Result<Vec<u8>, InvalidHuffman> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn derived_codes_match_rfc_appendix_b() {
        // (symbol, code, length) from RFC 7541 Appendix B.
        let known: [(usize, u32, u8); 11] = [
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b' ' as usize, 0x14, 6),
            (b'e' as usize, 0x5, 5),
            (b':' as usize, 0x5c, 7),
            (b'A' as usize, 0x21, 6),
            (0, 0x1ff8, 13),
            (1, 0x7f_ffd8, 23),
            (9, 0xff_ffea, 24),
            (10, 0x3fff_fffc, 30),
            (256, 0x3fff_ffff, 30),
        ];
        for (sym, code, len) in known {
            assert_eq!((CODES[sym], CODE_LENGTHS[sym]), (code, len), "symbol {sym}");
        }
    }

    #[test]
    fn code_is_complete() {
        // Kraft sum of a complete prefix code is exactly 1 (2^30 in units of 2^-30).
        let sum: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1 << 30);
    }

    #[test]
    fn rfc_appendix_c_strings() {
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
            ("9bd9 ab", "gzip"),
        ];
        for (coded, text) in cases {
            assert_eq!(decoded(&hex(coded)).unwrap(), text.as_bytes(), "{text}");
            assert_eq!(encode(text.as_bytes()), hex(coded), "{text}");
        }
    }

    #[test]
    fn round_trip_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(decoded(&encode(&[b])).unwrap(), [b], "byte {b}");
            let three = [b, b'a', b];
            assert_eq!(decoded(&encode(&three)).unwrap(), three, "bytes around {b}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decoded(&encode(&all)).unwrap(), all);
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    #[test]
    fn eos_inside_is_an_error() {
        // 'a' (00011), then EOS (30 ones), then five padding ones: 40 bits, 5 bytes.
        let bits: u64 = (0b00011 << 35) | (0x3fff_ffff << 5) | 0x1f;
        let bytes = bits.to_be_bytes()[3..].to_vec();
        assert_eq!(decoded(&bytes), Err(InvalidHuffman));
        // EOS alone, padded with two ones.
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(InvalidHuffman));
    }

    #[test]
    fn long_padding_is_an_error() {
        // '0' (00000) then 3 one bits is valid; a further full byte of ones is 11 bits.
        assert_eq!(decoded(&[0b0000_0111]).unwrap(), b"0");
        assert_eq!(decoded(&[0b0000_0111, 0xff]), Err(InvalidHuffman));
        assert_eq!(decoded(&[0xff]), Err(InvalidHuffman));
    }

    #[test]
    fn padding_with_a_zero_bit_is_an_error() {
        assert_eq!(decoded(&[0b0000_0101]), Err(InvalidHuffman));
        assert_eq!(decoded(&[0b0000_0110]), Err(InvalidHuffman));
    }
}
