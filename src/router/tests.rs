//! Unit tests of the router: one per precedence rule of SPEC section 3, plus
//! host normalization and the radix trie's edge splitting.

use super::Router;

/// Builds a router from `(host, prefix)` pairs.
fn router(routes: &[(Option<&str>, &str)]) -> Router {
    Router::new(routes.iter().copied())
}

#[test]
fn exact_host_matches_its_own_name_only() {
    let r = router(&[(Some("a.com"), "/")]);
    assert_eq!(r.route("a.com", "/x"), Some(0));
    assert_eq!(r.route("b.com", "/x"), None);
    assert_eq!(r.route("x.a.com", "/x"), None);
}

#[test]
fn host_is_matched_case_insensitively_without_its_port() {
    let r = router(&[(Some("a.com"), "/")]);
    assert_eq!(r.route("A.Com", "/"), Some(0));
    assert_eq!(r.route("A.COM:8080", "/"), Some(0));
    assert_eq!(r.route("a.com.", "/"), Some(0));
    assert_eq!(r.route("a.com.:443", "/"), Some(0));
}

#[test]
fn uppercase_patterns_are_lowercased_at_build_time() {
    let r = router(&[(Some("A.COM"), "/"), (Some("*.Example.COM"), "/")]);
    assert_eq!(r.route("a.com", "/"), Some(0));
    assert_eq!(r.route("x.example.com", "/"), Some(1));
}

#[test]
fn bracketed_ipv6_host_keeps_its_brackets_and_drops_its_port() {
    let r = router(&[(Some("[::1]"), "/"), (None, "/")]);
    assert_eq!(r.route("[::1]:80", "/"), Some(0));
    assert_eq!(r.route("[::1]", "/"), Some(0));
    assert_eq!(r.route("[::2]:80", "/"), Some(1));
}

#[test]
fn empty_host_reaches_only_any_host_routes() {
    let r = router(&[(Some("a.com"), "/"), (Some("*.a.com"), "/")]);
    assert_eq!(r.route("", "/"), None);
    let r = router(&[(Some("a.com"), "/"), (None, "/")]);
    assert_eq!(r.route("", "/"), Some(1));
}

#[test]
fn host_longer_than_the_buffer_is_an_unknown_name() {
    let long = format!("{}.a.com", "x".repeat(super::MAX_HOST_LEN));
    let r = router(&[
        (Some(long.as_str()), "/"),
        (Some("*.a.com"), "/"),
        (None, "/"),
    ]);
    assert_eq!(r.route(&long, "/"), Some(2));
    let fits = format!("{}.a.com", "x".repeat(10));
    assert_eq!(r.route(&fits, "/"), Some(1));
}

#[test]
fn wildcard_matches_one_or_more_labels_but_not_the_bare_suffix() {
    let r = router(&[(Some("*.example.com"), "/")]);
    assert_eq!(r.route("x.example.com", "/"), Some(0));
    assert_eq!(r.route("a.b.example.com", "/"), Some(0));
    assert_eq!(r.route("example.com", "/"), None);
    assert_eq!(r.route(".example.com", "/"), None);
    assert_eq!(r.route("xexample.com", "/"), None);
}

#[test]
fn exact_host_beats_wildcard_whatever_the_order() {
    let r = router(&[(Some("*.example.com"), "/"), (Some("api.example.com"), "/")]);
    assert_eq!(r.route("api.example.com", "/"), Some(1));
    assert_eq!(r.route("web.example.com", "/"), Some(0));
}

#[test]
fn longer_wildcard_suffix_beats_shorter_one() {
    let r = router(&[
        (Some("*.com"), "/"),
        (Some("*.example.com"), "/"),
        (Some("*.eu.example.com"), "/"),
    ]);
    assert_eq!(r.route("x.eu.example.com", "/"), Some(2));
    assert_eq!(r.route("a.b.eu.example.com", "/"), Some(2));
    assert_eq!(r.route("eu.example.com", "/"), Some(1));
    assert_eq!(r.route("x.example.com", "/"), Some(1));
    assert_eq!(r.route("example.com", "/"), Some(0));
}

#[test]
fn any_host_route_comes_last() {
    let r = router(&[(None, "/"), (Some("*.a.com"), "/"), (Some("a.com"), "/")]);
    assert_eq!(r.route("a.com", "/"), Some(2));
    assert_eq!(r.route("x.a.com", "/"), Some(1));
    assert_eq!(r.route("b.com", "/"), Some(0));
}

#[test]
fn host_wins_over_a_longer_prefix_on_a_less_specific_host() {
    let r = router(&[(None, "/api/v1/users"), (Some("a.com"), "/")]);
    assert_eq!(r.route("a.com", "/api/v1/users/7"), Some(1));
}

#[test]
fn longest_prefix_wins_within_a_host_whatever_the_order() {
    let r = router(&[
        (Some("a.com"), "/"),
        (Some("a.com"), "/api/v1/"),
        (Some("a.com"), "/api/"),
    ]);
    assert_eq!(r.route("a.com", "/api/v1/users"), Some(1));
    assert_eq!(r.route("a.com", "/api/v2/users"), Some(2));
    assert_eq!(r.route("a.com", "/web"), Some(0));
}

#[test]
fn prefix_is_a_plain_string_prefix_not_a_path_segment() {
    let r = router(&[(None, "/api")]);
    assert_eq!(r.route("a.com", "/api"), Some(0));
    assert_eq!(r.route("a.com", "/apiary"), Some(0));
    assert_eq!(r.route("a.com", "/ap"), None);
    assert_eq!(r.route("a.com", "/API"), None);
}

#[test]
fn exact_host_without_a_matching_prefix_falls_through_to_any_host() {
    let r = router(&[(Some("a.com"), "/api/"), (None, "/")]);
    assert_eq!(r.route("a.com", "/api/x"), Some(0));
    assert_eq!(r.route("a.com", "/other"), Some(1));
}

#[test]
fn exact_host_without_a_matching_prefix_falls_through_to_wildcard() {
    let r = router(&[
        (Some("api.a.com"), "/v1/"),
        (Some("*.a.com"), "/"),
        (None, "/"),
    ]);
    assert_eq!(r.route("api.a.com", "/v2/"), Some(1));
}

#[test]
fn longer_wildcard_without_a_matching_prefix_falls_through_to_shorter_one() {
    let r = router(&[
        (Some("*.eu.a.com"), "/v1/"),
        (Some("*.a.com"), "/v2/"),
        (None, "/v3/"),
    ]);
    assert_eq!(r.route("x.eu.a.com", "/v1/"), Some(0));
    assert_eq!(r.route("x.eu.a.com", "/v2/"), Some(1));
    assert_eq!(r.route("x.eu.a.com", "/v3/"), Some(2));
    assert_eq!(r.route("x.eu.a.com", "/v4/"), None);
}

#[test]
fn no_matching_route_is_none() {
    let r = router(&[(Some("a.com"), "/api/")]);
    assert_eq!(r.route("a.com", "/"), None);
    assert_eq!(Router::new([]).route("a.com", "/"), None);
}

#[test]
fn duplicate_host_and_prefix_keeps_the_first_route() {
    let r = router(&[
        (Some("a.com"), "/x"),
        (Some("a.com"), "/x"),
        (None, "/"),
        (None, "/"),
    ]);
    assert_eq!(r.route("a.com", "/x"), Some(0));
    assert_eq!(r.route("b.com", "/"), Some(2));
}

#[test]
fn star_alone_means_any_host() {
    let r = router(&[(Some("*"), "/")]);
    assert_eq!(r.route("whatever.org", "/"), Some(0));
}

#[test]
fn trie_splits_shared_prefixes_and_keeps_every_route() {
    let prefixes = [
        "/api/v1/users",
        "/api/v1/",
        "/api/v2/",
        "/a",
        "/",
        "/api/v1/users/me",
        "/b/c",
    ];
    let r = Router::new(prefixes.iter().map(|p| (None, *p)));
    let cases = [
        ("/api/v1/users/me/x", 5),
        ("/api/v1/users/7", 0),
        ("/api/v1/x", 1),
        ("/api/v2/x", 2),
        ("/api/v3/", 3),
        ("/b/c/d", 6),
        ("/b/d", 4),
        ("/", 4),
    ];
    for (path, want) in cases {
        assert_eq!(r.route("h", path), Some(want), "{path}");
    }
    assert_eq!(r.route("h", ""), None);
}

#[test]
fn many_routes_still_pick_the_most_specific_one() {
    let hosts: Vec<String> = (0..500).map(|i| format!("svc{i}.example.com")).collect();
    let mut routes: Vec<(Option<&str>, &str)> = Vec::new();
    for host in &hosts {
        routes.push((Some(host.as_str()), "/api/"));
        routes.push((Some(host.as_str()), "/api/v2/"));
    }
    routes.push((Some("*.example.com"), "/"));
    routes.push((None, "/"));
    let r = Router::new(routes.iter().copied());
    assert_eq!(r.route("SVC42.example.com:80", "/api/v2/x"), Some(85));
    assert_eq!(r.route("svc42.example.com", "/api/v1"), Some(84));
    assert_eq!(r.route("svc42.example.com", "/web"), Some(1000));
    assert_eq!(r.route("example.org", "/web"), Some(1001));
}
