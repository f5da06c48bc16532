//! The small value languages of `proxy.yaml`: durations (`500ms`, `2s`, `1m`), sizes (`64KiB`),
//! socket addresses and upstream `host:port` strings, with their serde glue.
//!
//! Parsing happens inside serde visitors so that `serde_yaml_ng` attaches the value's line and
//! column to the error; a `TryFrom` conversion would run after the scalar is consumed and the
//! error would point at the enclosing mapping instead. Cross-field rules live in `validate.rs`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;

/// What every duration error says, so operators learn the one accepted form.
const DURATION_EXPECTED: &str = "expected a duration with a unit, like 500ms, 2s or 1m";
/// What every size error says.
const SIZE_EXPECTED: &str = "expected a size in bytes (an integer) or an integer with a unit: \
     B, KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000), like 64KiB";

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `1h`; a bare number or another unit is an error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {text:?}: {DURATION_EXPECTED}");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(err)?;
    let (number, unit) = text.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(err()),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || (number.contains('.') && frac.is_empty()) || frac.len() > 9 {
        return Err(err());
    }
    let int: u128 = int.parse().map_err(|_| err())?;
    // Integer arithmetic: "0.1s" must be exactly 100ms, which f64 cannot promise.
    let frac_nanos = if frac.is_empty() {
        0
    } else {
        let digits: u128 = frac.parse().map_err(|_| err())?;
        digits * unit_nanos / 10u128.pow(frac.len() as u32)
    };
    let nanos = int
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(frac_nanos))
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("duration {text:?} is too long: at most 5124095h (584 years)"))?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration in the largest unit that represents it exactly: `30s`, `1m`, `500ms`.
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if !nanos.is_multiple_of(1_000_000) {
        return format!("{}s", d.as_secs_f64());
    }
    let ms = nanos / 1_000_000;
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// Parses `65536`, `64KiB`, `10 MiB`, `1GB`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let err = || format!("invalid size {text:?}: {SIZE_EXPECTED}");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    let number: u64 = number.parse().map_err(|_| err())?;
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses a listener or admin `bind`: `IP:PORT`, `[IPv6]:PORT`, or `host:port` with a name
/// resolved once, here (the first IPv4 address it has, else its first address).
pub(crate) fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        // `[::ffff:127.0.0.1]:P` is an IPv4 address: IPv6 listeners are bound IPv6-only,
        // where the kernel refuses it, and it competes with `127.0.0.1:P` for the port.
        return Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()));
    }
    let invalid = || {
        format!(
            "invalid bind address {text:?}: expected host:port or [IPv6]:port, like \
             0.0.0.0:8080, localhost:9901 or [::]:8080"
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    // Only names go to the resolver: digits and dots that are not an IP (`127.1`) are an
    // error here, not the shorthand getaddrinfo would make of them.
    let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if !host.chars().all(name) || host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(invalid());
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve bind address {text:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("bind address {text:?} resolves to no address"))
}

/// Checks an upstream `addr`: `host:port`, `1.2.3.4:port` or `[v6]:port`, port 1..=65535.
pub(crate) fn check_upstream_addr(addr: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid upstream address {addr:?}: {why}; expected host:port, like \
             10.0.0.1:8080, api.internal:8080 or [2001:db8::1]:8080"
        ))
    };
    if addr.contains("://") {
        return bad("no scheme is allowed");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("missing port");
    };
    match port.parse::<u16>() {
        Ok(p) if p >= 1 => {}
        _ => return bad("the port must be a number from 1 to 65535"),
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(Ipv6Addr::from_str) {
            Some(Ok(_)) => Ok(()),
            _ => bad("invalid IPv6 address in brackets"),
        };
    }
    if host.contains(':') {
        return bad("write IPv6 addresses in brackets");
    }
    if host.is_empty() {
        return bad("the host is empty");
    }
    let numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if numeric {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => bad("invalid IPv4 address"),
        };
    }
    if !is_dns_name(host) {
        return bad("the host is not a valid DNS name");
    }
    Ok(())
}

/// True for `api.internal`, `my-svc_1.ns`: labels of letters, digits, `-` and `_`.
pub(crate) fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

// === serde glue ===

/// `#[serde(with = "duration")]`: a string with a unit in, the same form out.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(ParseVisitor(parse_duration, DURATION_EXPECTED))
    }
}

/// `#[serde(deserialize_with = "size")]`: an integer or a string with a unit.
pub(crate) fn size<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    let bytes = d.deserialize_any(ParseVisitor(parse_size, SIZE_EXPECTED))?;
    T::try_from(bytes).map_err(|_| de::Error::custom(format!("size {bytes} is too large")))
}

/// Like [`size`] for an optional field (absent or `null` is `None`).
pub(crate) fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptVisitor)
}

/// `#[serde(deserialize_with = "bind")]` for `SocketAddr` fields.
pub(crate) fn bind<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(ParseVisitor(parse_bind, "a host:port address"))
}

/// Deserializes any `FromStr` type whose error is a ready-made message.
pub(crate) fn from_str<'de, D, T>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    d.deserialize_str(ParseVisitor(T::from_str, expecting))
}

/// Serializes any `Display` type as its string form.
pub(crate) fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Feeds a scalar (string or integer) to a parse function; errors keep the value's position.
struct ParseVisitor<F>(F, &'static str);

impl<'de, T, F: Fn(&str) -> Result<T, String>> Visitor<'de> for ParseVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // serde writes "expected " before this; the shared texts already start with it.
        f.write_str(self.1.strip_prefix("expected ").unwrap_or(self.1))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// `None` for null, otherwise a size.
struct OptVisitor;

impl<'de> Visitor<'de> for OptVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SIZE_EXPECTED)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        size(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_may_have_a_fraction() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2s"), Ok(ms(2_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("0.1s"), Ok(ms(100)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        for bad in [
            "30",
            "",
            "s",
            "1.s",
            ".5s",
            "5x",
            "1 s",
            "-1s",
            "1.2.3s",
            "99999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        let err = parse_duration("30").unwrap_err();
        assert!(err.ends_with("expected a duration with a unit, like 500ms, 2s or 1m"));
    }

    #[test]
    fn a_duration_past_the_longest_says_what_the_longest_is() {
        assert!(parse_duration("5124095h").is_ok());
        let err = parse_duration("5124096h").unwrap_err();
        assert!(
            err.ends_with("is too long: at most 5124095h (584 years)"),
            "{err}"
        );
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        for text in ["0s", "500ms", "30s", "1m", "90s", "2h", "1500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_micros(1500)), "0.0015s");
    }

    #[test]
    fn sizes_take_bytes_or_a_unit() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2KB"), Ok(2_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "10XB",
            "-1",
            "10kib",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("10XB").unwrap_err().contains("KiB, MiB, GiB"));
    }

    #[test]
    fn upstream_addresses_are_host_port() {
        for good in [
            "10.0.0.1:80",
            "api.internal:8080",
            "localhost:1",
            "[::1]:443",
            "a_b-c:65535",
        ] {
            assert_eq!(check_upstream_addr(good), Ok(()), "{good}");
        }
        let cases = [
            ("10.0.0.1", "missing port"),
            ("10.0.0.1:0", "port must be a number from 1 to 65535"),
            ("10.0.0.1:70000", "port must be"),
            (":80", "the host is empty"),
            ("::1:80", "brackets"),
            ("[zz]:80", "invalid IPv6"),
            ("999.1.1.1:80", "invalid IPv4"),
            ("http://a:80", "no scheme"),
            ("a..b:80", "not a valid DNS name"),
            ("a b:80", "not a valid DNS name"),
        ];
        for (bad, why) in cases {
            let err = check_upstream_addr(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn bind_addresses_are_host_port() {
        assert_eq!(parse_bind("0.0.0.0:8080"), Ok(([0, 0, 0, 0], 8080).into()));
        assert!(parse_bind("[::]:0").is_ok());
        // Review: an IPv4-mapped address is the IPv4 one (an IPv6-only socket refuses it).
        assert_eq!(
            parse_bind("[::ffff:127.0.0.1]:8080"),
            Ok(([127, 0, 0, 1], 8080).into())
        );
        // Resolved from /etc/hosts; IPv4 first.
        assert_eq!(parse_bind("localhost:80"), Ok(([127, 0, 0, 1], 80).into()));
        for bad in [
            "localhost",
            "localhost:http",
            ":80",
            "::1:80",
            "[::1]:99999",
            "127.1:80",
        ] {
            assert!(
                parse_bind(bad).unwrap_err().contains("expected host:port"),
                "{bad}"
            );
        }
    }
}
