//! The string-shaped values of `proxy.yaml`: `workers`, `access_log`, `hash_key` and
//! `expect_status`. Each parses with `FromStr` (errors are ready-made messages), prints with
//! `Display` or a plain string, and goes through serde in that form, so the admin API's JSON dump
//! shows what the operator wrote. The types themselves are declared in `file.rs`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::file::{AccessLog, HashKey, StatusRanges, Workers, MAX_WORKERS};
use super::units;

// === impl StatusRanges ===

impl StatusRanges {
    /// True when `code` falls in one of the ranges.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl FromStr for StatusRanges {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "invalid expect_status {text:?}: expected status codes (100-599) and ranges \
                 separated by commas, like \"200-399\" or \"200-299,304\""
            )
        };
        let code = |s: &str| match s.trim().parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(err()),
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => (code(part)?, code(part)?),
            };
            if lo > hi {
                return Err(err());
            }
            ranges.push((lo, hi));
        }
        Ok(StatusRanges(ranges))
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            match lo == hi {
                true => write!(f, "{sep}{lo}")?,
                false => write!(f, "{sep}{lo}-{hi}")?,
            }
        }
        Ok(())
    }
}

// === impl HashKey ===

impl FromStr for HashKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let err = |why: &str| {
            format!(
                "invalid hash_key {text:?}: {why}; expected \"header:<name>\", \
                 \"cookie:<name>\" or \"client_ip\""
            )
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(HashKey::ClientIp),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| err("not a valid header name")),
            Some(("cookie", name)) if is_token(name) => Ok(HashKey::Cookie(name.to_owned())),
            Some(("cookie", _)) => Err(err("not a valid cookie name")),
            _ => Err(err("unknown form")),
        }
    }
}

/// RFC 9110 token characters, which is what cookie names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::ClientIp => f.write_str("client_ip"),
        }
    }
}

// === serde for the string-shaped types ===

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::from_str(d, "\"header:<name>\", \"cookie:<name>\" or \"client_ip\"")
    }
}

impl<'de> Deserialize<'de> for StatusRanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::from_str(d, "status codes and ranges, like \"200-399\"")
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::from_str(d, "`auto` or an integer from 1 to 1024")
    }
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::from_str(d, "stdout, off or a file path")
    }
}

impl FromStr for Workers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.parse::<usize>() {
            _ if text == "auto" => Ok(Workers::Auto),
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(Workers::Count(n)),
            _ => Err(format!(
                "invalid workers {text:?}: expected `auto` or an integer from 1 to {MAX_WORKERS}"
            )),
        }
    }
}

impl FromStr for AccessLog {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "stdout" => Ok(AccessLog::Stdout),
            // `false`: YAML 1.1 habits (`access_log: no`) should not create a file named "false".
            "off" | "false" | "no" => Ok(AccessLog::Off),
            "" | "~" | "null" | "true" | "yes" => Err(format!(
                "invalid access_log {text:?}: expected stdout, off or a file path"
            )),
            path => Ok(AccessLog::File(PathBuf::from(path))),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl Serialize for AccessLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AccessLog::Stdout => s.serialize_str("stdout"),
            AccessLog::Off => s.serialize_str("off"),
            AccessLog::File(path) => s.collect_str(&path.display()),
        }
    }
}

impl Serialize for HashKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        units::display(self, s)
    }
}

impl Serialize for StatusRanges {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        units::display(self, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_lists_and_ranges() {
        let ranges: StatusRanges = "200-299, 304".parse().unwrap();
        assert_eq!(ranges, StatusRanges(vec![(200, 299), (304, 304)]));
        assert!(ranges.contains(204) && ranges.contains(304));
        assert!(!ranges.contains(301) && !ranges.contains(500));
        assert_eq!(ranges.to_string(), "200-299,304");
        for bad in ["", "2xx", "600", "99", "399-200", "200-", "200,,204"] {
            assert!(bad.parse::<StatusRanges>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hash_keys_have_three_forms() {
        let key: HashKey = "header:X-User".parse().unwrap();
        assert_eq!(key.to_string(), "header:x-user");
        assert_eq!(
            "cookie:session".parse(),
            Ok(HashKey::Cookie("session".into()))
        );
        assert_eq!("client_ip".parse(), Ok(HashKey::ClientIp));
        for bad in [
            "header:",
            "header:a b",
            "cookie:",
            "cookie:a;b",
            "ip",
            "query:x",
        ] {
            assert!(bad.parse::<HashKey>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn access_log_is_stdout_off_or_a_path() {
        assert_eq!("stdout".parse(), Ok(AccessLog::Stdout));
        assert_eq!("off".parse(), Ok(AccessLog::Off));
        assert_eq!("false".parse(), Ok(AccessLog::Off));
        assert_eq!("a.log".parse(), Ok(AccessLog::File("a.log".into())));
        assert!("".parse::<AccessLog>().is_err());
    }

    #[test]
    fn workers_are_auto_or_positive() {
        assert_eq!("auto".parse(), Ok(Workers::Auto));
        assert_eq!("8".parse(), Ok(Workers::Count(8)));
        // The type error's wording (a literal, for serde) names the same bound.
        let error = serde_yaml_ng::from_str::<Workers>("[]")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("from 1 to {MAX_WORKERS}")),
            "{error}"
        );
        assert!("0".parse::<Workers>().is_err() && "many".parse::<Workers>().is_err());
    }
}
