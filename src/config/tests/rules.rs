//! One test per semantic rule of `validate.rs`: every error is reported, each positioned.

use super::{assert_error, errors, parse_str, BASE};

#[test]
fn dangling_pool_names_the_defined_pools() {
    let yaml = BASE.replace("    pool: api\n", "    pool: apii\n");
    assert_error(&yaml, 6, 11, "unknown pool \"apii\"; defined pools: api");
}

#[test]
fn duplicate_route_name_points_at_the_second_and_names_the_first() {
    let yaml = BASE.replace(
        "pools:",
        "  - name: api\n    pool: api\n    match: { path_prefix: /x }\npools:",
    );
    assert_error(
        &yaml,
        7,
        11,
        "duplicate route name \"api\": already used at line 5",
    );
}

#[test]
fn duplicate_pool_and_listener_names_are_errors() {
    let yaml = format!("{BASE}  - name: api\n");
    assert_error(&yaml, 11, 11, "duplicate pool name \"api\"");
    let yaml = BASE.replace(
        "routes:",
        "  - name: public\n    bind: \"127.0.0.1:8081\"\nroutes:",
    );
    assert_error(&yaml, 4, 11, "duplicate listener name \"public\"");
}

#[test]
fn names_must_be_plain() {
    let yaml = BASE.replace("name: api\n    pool", "name: \"my api\"\n    pool");
    assert_error(
        &yaml,
        5,
        11,
        "invalid route name \"my api\": use letters, digits",
    );
    let yaml = BASE.replace("name: api\n    pool", "name: \"\"\n    pool");
    assert_error(&yaml, 5, 11, "route name must not be empty");
}

#[test]
fn weight_out_of_range_is_positioned() {
    let yaml = BASE.replace("\"10.0.0.1:80\" }", "\"10.0.0.1:80\", weight: 0 }");
    assert_error(
        &yaml,
        10,
        40,
        "weight 0 is out of range: expected an integer from 1 to 10000",
    );
    let yaml = BASE.replace("\"10.0.0.1:80\" }", "\"10.0.0.1:80\", weight: 10001 }");
    assert_error(&yaml, 10, 40, "weight 10001 is out of range");
}

#[test]
fn duplicate_any_host_routes_say_so() {
    let yaml = BASE.replace(
        "pools:",
        "  - { name: b, pool: api, match: { path_prefix: / } }\npools:",
    );
    assert_error(
        &yaml,
        7,
        34,
        "routes \"api\" and \"b\" both match any host and path_prefix \"/\"",
    );
}

#[test]
fn duplicate_host_and_prefix_names_both_routes() {
    let yaml = BASE.replace(
        "    pool: api\n",
        "    pool: api\n    match: { host: API.example.com }\n  - name: api2\n    pool: api\n    match: { host: api.example.com, path_prefix: / }\n",
    );
    assert_error(
        &yaml,
        10,
        12,
        "routes \"api\" and \"api2\" both match host \"api.example.com\" and path_prefix \"/\"",
    );
}

#[test]
fn bad_upstream_address_is_positioned() {
    let yaml = BASE.replace("\"10.0.0.1:80\"", "\"10.0.0.1\"");
    assert_error(
        &yaml,
        10,
        17,
        "invalid upstream address \"10.0.0.1\": missing port",
    );
}

#[test]
fn duplicate_upstream_in_a_pool_is_an_error() {
    let yaml = format!("{BASE}      - {{ addr: \"10.0.0.1:80\", weight: 2 }}\n");
    assert_error(
        &yaml,
        11,
        17,
        "duplicate upstream \"10.0.0.1:80\": already listed at line 10",
    );
}

#[test]
fn one_upstream_spelled_two_ways_is_a_duplicate() {
    // Audit c41: `check` took these, and `run` left the second out with a warning.
    for (first, second) in [
        ("[::1]:80", "[0:0::1]:80"),
        ("10.0.0.1:80", "10.0.0.1:080"),
        ("api.internal:80", "API.internal:80"),
    ] {
        let yaml = BASE.replace(
            "      - { addr: \"10.0.0.1:80\" }\n",
            &format!("      - {{ addr: \"{first}\" }}\n      - {{ addr: \"{second}\" }}\n"),
        );
        assert_error(
            &yaml,
            11,
            17,
            &format!("duplicate upstream \"{second}\": already listed at line 10"),
        );
    }
}

#[test]
fn several_semantic_errors_are_all_reported_in_file_order() {
    let yaml = "\
admin: { bind: \"0.0.0.0:9901\" }
listeners: []
routes:
  - { name: a, pool: nope, retries: 50, match: { path_prefix: v1 } }
  - { name: a, pool: p, timeout: 0s }
pools:
  - name: p
    strategy: random
    hash_key: client_ip
    upstreams: [{ addr: \"x:0\", weight: 0 }]
";
    let errors: Vec<String> = errors(yaml).iter().map(ToString::to_string).collect();
    let want = [
        "proxy.yaml:1:16: admin.bind 0.0.0.0:9901 is not loopback; set admin.token",
        "proxy.yaml:2:12: no listeners: define at least one",
        "proxy.yaml:4:22: unknown pool \"nope\"; defined pools: p",
        "proxy.yaml:4:37: retries 50 is too many: at most 10",
        "proxy.yaml:4:63: path_prefix \"v1\" must start with \"/\"",
        "proxy.yaml:5:13: duplicate route name \"a\": already used at line 4",
        "proxy.yaml:5:34: timeout must be greater than 0",
        "proxy.yaml:9:15: hash_key is only used by strategy consistent_hash (this pool uses random)",
        "proxy.yaml:10:25: invalid upstream address \"x:0\": the port must be a number from 1 to 65535",
        "proxy.yaml:10:40: weight 0 is out of range",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(want) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
    let display = parse_str(yaml).unwrap_err().to_string();
    assert_eq!(display.lines().count(), want.len());
}

#[test]
fn no_listeners_key_points_at_the_top() {
    let yaml = BASE.replace(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:8080\"\n",
        "",
    );
    assert_error(&yaml, 1, 1, "no listeners");
}

#[test]
fn overlapping_listener_binds_are_an_error_but_port_0_is_not() {
    let two = "  - { name: b, bind: \"127.0.0.1:8080\" }\nroutes:";
    assert_error(
        &BASE.replace("routes:", two),
        4,
        22,
        "bind 127.0.0.1:8080 overlaps listener \"public\"",
    );
    let zeros = BASE
        .replace(":8080", ":0")
        .replace("routes:", "  - { name: b, bind: \"127.0.0.1:0\" }\nroutes:");
    assert!(parse_str(&zeros).is_ok());
    let with = |bind: &str| {
        BASE.replace(
            "routes:",
            &format!("  - {{ name: b, bind: \"{bind}\" }}\nroutes:"),
        )
    };
    let wildcard = "bind 0.0.0.0:8080 overlaps listener \"public\" (127.0.0.1:8080)";
    assert_error(&with("0.0.0.0:8080"), 4, 22, wildcard);
    assert!(parse_str(&with("127.0.0.2:8080")).is_ok());
    assert!(parse_str(&with("[::]:8080")).is_ok());
}

#[test]
fn listener_limits_must_be_usable() {
    let limits =
        "    limits: { max_connections: 0, idle_timeout: 0s, max_header_bytes: 100 }\nroutes:";
    let errors = errors(&BASE.replace("routes:", limits));
    let messages: Vec<_> = errors.iter().map(|e| (e.col, e.message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (32, "max_connections must be at least 1"),
            (49, "idle_timeout must be greater than 0, like 1s"),
            (71, "max_header_bytes must be at least 1024 (1KiB)"),
        ]
    );
}

#[test]
fn listener_tls_needs_a_certificate() {
    let yaml = BASE.replace("routes:", "    tls: { certificates: [] }\nroutes:");
    assert_error(&yaml, 4, 26, "tls needs at least one certificate");
}

#[test]
fn admin_rules() {
    let ok = |admin: &str| parse_str(&format!("admin: {admin}\n{BASE}")).is_ok();
    assert!(ok("{ bind: \"127.0.0.1:9901\" }"));
    assert!(ok("{ bind: \"[::1]:9901\" }"));
    assert!(ok("{ bind: \"0.0.0.0:9901\", token: s3cret }"));
    let yaml = format!("admin: {{ bind: \"0.0.0.0:9901\", token: \"\" }}\n{BASE}");
    assert_error(&yaml, 1, 39, "admin.token must not be empty");
    let yaml = format!("admin: {{ bind: \"127.0.0.1:8080\" }}\n{BASE}");
    assert_error(
        &yaml,
        1,
        16,
        "admin.bind 127.0.0.1:8080 overlaps listener \"public\" (127.0.0.1:8080)",
    );
}

#[test]
fn host_patterns_are_lowercased_and_checked() {
    let with_host = |host: &str| {
        BASE.replace(
            "    pool: api\n",
            &format!("    pool: api\n    match: {{ host: \"{host}\" }}\n"),
        )
    };
    let config = parse_str(&with_host("*.Example.COM")).unwrap();
    assert_eq!(
        config.routes[0].matcher.host.as_deref(),
        Some("*.example.com")
    );
    assert_error(
        &with_host("api.*.com"),
        7,
        20,
        "\"*\" is only allowed as the first label",
    );
    assert_error(
        &with_host("*"),
        7,
        20,
        "\"*\" is only allowed as the first label",
    );
    assert_error(
        &with_host("a.com:8080"),
        7,
        20,
        "hosts are matched without the port",
    );
    assert_error(&with_host("a..com"), 7, 20, "expected a DNS name");
    assert_error(&with_host(""), 7, 20, "host must not be empty");
}

#[test]
fn hash_key_belongs_to_consistent_hash_which_may_omit_it() {
    let yaml = format!("{BASE}    hash_key: \"cookie:session\"\n");
    assert_error(
        &yaml,
        11,
        15,
        "hash_key is only used by strategy consistent_hash (this pool uses round_robin)",
    );
    let yaml = format!("{BASE}    strategy: consistent_hash\n");
    assert_eq!(parse_str(&yaml).unwrap().pools[0].hash_key, None);
}

#[test]
fn pool_without_upstreams_or_discovery_is_allowed() {
    let yaml = BASE.replace("    upstreams:\n      - { addr: \"10.0.0.1:80\" }\n", "");
    assert!(parse_str(&yaml).unwrap().pools[0].upstreams.is_empty());
}

#[test]
fn discovery_needs_a_usable_source() {
    assert_error(
        &format!("{BASE}    discovery: {{}}\n"),
        11,
        16,
        "discovery needs a source",
    );
    let etcd = "    discovery: { etcd: { endpoints: [\"127.0.0.1:2379\"], prefix: \"\" } }\n";
    let errors = errors(&format!("{BASE}{etcd}"));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0]
        .message
        .starts_with("invalid etcd endpoint \"127.0.0.1:2379\""));
    assert!(errors[1]
        .message
        .starts_with("etcd.prefix must not be empty"));
    let tls = "    discovery: { etcd: { endpoints: [\"https://e:2379\"], prefix: /s/ } }\n";
    let refused = super::errors(&format!("{BASE}{tls}"));
    assert!(
        refused[0].message.contains("https is not supported"),
        "{refused:?}"
    );
    let etcd = "    discovery: { etcd: { endpoints: [\"http://e:2379\"], prefix: /s/api/ } }\n";
    assert!(parse_str(&format!("{BASE}{etcd}")).is_ok());
}

#[test]
fn etcd_endpoints_the_client_cannot_use_are_errors() {
    // Each of these starts with "http://" but names no host, or no usable port.
    for bad in [
        "http://",
        "http://127.0.0.1:abc",
        "http://127.0.0.1:99999",
        "http://:2379",
    ] {
        let etcd =
            format!("    discovery: {{ etcd: {{ endpoints: [\"{bad}\"], prefix: /s/ }} }}\n");
        let errors = errors(&format!("{BASE}{etcd}"));
        assert_eq!(errors.len(), 1, "{bad}: {errors:#?}");
        assert!(
            errors[0]
                .message
                .starts_with(&format!("invalid etcd endpoint {bad:?}")),
            "{bad}: {errors:#?}"
        );
    }
}

#[test]
fn health_check_rules() {
    let hc = "    health_check: { path: healthz, interval: 0s, healthy_threshold: 0, unhealthy_threshold: 0 }\n";
    let errors = errors(&format!("{BASE}{hc}"));
    let messages: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "health_check.path \"healthz\" must start with \"/\"",
            "interval must be greater than 0, like 1s",
            "healthy_threshold must be at least 1",
            "unhealthy_threshold must be at least 1",
        ]
    );
}

#[test]
fn outlier_rules() {
    let yaml = format!("{BASE}    outlier: {{ consecutive_failures: 0, ejection_time: 0ms }}\n");
    assert_eq!(errors(&yaml).len(), 2);
}

#[test]
fn tunnel_idle_timeout_defaults_to_an_hour_and_must_be_positive() {
    let config = parse_str(BASE).unwrap();
    assert_eq!(
        config.routes[0].tunnel_idle_timeout,
        std::time::Duration::from_secs(3600)
    );
    let set = BASE.replace(
        "    pool: api\n",
        "    pool: api\n    tunnel_idle_timeout: 90s\n",
    );
    let config = parse_str(&set).unwrap();
    assert_eq!(
        config.routes[0].tunnel_idle_timeout,
        std::time::Duration::from_secs(90)
    );
    let zero = BASE.replace(
        "    pool: api\n",
        "    pool: api\n    tunnel_idle_timeout: 0s\n",
    );
    assert_error(
        &zero,
        7,
        26,
        "tunnel_idle_timeout must be greater than 0, like 1s",
    );
}
