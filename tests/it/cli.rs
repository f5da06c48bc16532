//! The command line through the real binary: `check`, `--version`, `--help`, run and SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::TempDir;
use crate::support::{self, Backend};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A config file in a fresh temporary directory, removed when the returned guard drops.
fn write_config(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(&format!("cli-{name}"));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn check(name: &str, text: &str) -> Output {
    let (_dir, path) = write_config(name, text);
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

/// `switchyard --config PATH` (`run`, the default command), to its end.
fn run_with(path: &std::path::Path) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(path)
        .output()
        .unwrap()
}

/// `switchyard run FLAG VALUE --config /nonexistent.yaml`: how the command line takes a flag.
fn run_flag(flag: &str, value: &str) -> Output {
    let args = ["run", flag, value, "--config", "/nonexistent.yaml"];
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const VALID: &str = "listeners:\n  - name: a\n    bind: \"127.0.0.1:8080\"\nroutes:\n  - name: r\n    match: { path_prefix: \"/\" }\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - { addr: \"127.0.0.1:9001\" }\n";

#[test]
fn check_accepts_a_valid_file_with_a_one_line_summary() {
    let out = check("valid.yaml", VALID);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("valid.yaml: ok") || stdout.contains("valid.yaml: ok"),
        "{stdout}"
    );
}

#[test]
fn check_reports_an_unknown_key_with_line_and_column() {
    let text = VALID.replace("    pool: p\n", "    pool: p\n    timeuot: 5s\n");
    let out = check("unknown.yaml", &text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("unknown.yaml:8:5:"), "{err}");
    assert!(
        err.contains("unknown field `timeuot`") && err.contains("`timeout`"),
        "{err}"
    );
}

#[test]
fn check_reports_a_dangling_pool_and_every_other_error() {
    let text = VALID
        .replace("    pool: p\n", "    pool: apii\n")
        .replace("\"127.0.0.1:9001\" }", "\"127.0.0.1:9001\", weight: 0 }");
    let out = check("dangling.yaml", &text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("dangling.yaml:7:11: unknown pool \"apii\"; defined pools: p"),
        "{err}"
    );
    assert!(err.contains("dangling.yaml:11:43: weight 0"), "{err}");
}

#[test]
fn check_reports_every_bad_key_and_value_in_one_run() {
    let text = "listeners:\n  - name: a\n    bind: \"127.0.0.1:8080\"\n    limits: { max_connections: 5 }\nroutes:\n  - name: r\n    pool: apii\n    timeuot: 5s\n  - name: s\n    match: { path_prefix: \"/s/\" }\n    pool: p\n    timeout: 5\npools:\n  - name: p\n    strategy: fastest\n    upstreams:\n      - { addr: \"127.0.0.1:9001\" }\n";
    let out = check("several.yaml", text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("/several.yaml:"))
        .collect();
    let at: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit('/').next().unwrap().split(": ").next().unwrap())
        .collect();
    assert_eq!(
        at,
        [
            "several.yaml:7:11",
            "several.yaml:8:5",
            "several.yaml:12:14",
            "several.yaml:15:15"
        ],
        "{err}"
    );
    assert!(lines[0].contains("unknown pool \"apii\""), "{err}");
    assert!(lines[1].contains("unknown field `timeuot`"), "{err}");
    assert!(
        lines[2].contains("expected a duration with a unit"),
        "{err}"
    );
    assert!(lines[3].contains("unknown variant `fastest`"), "{err}");
}

#[test]
fn check_stops_at_an_error_it_cannot_step_over() {
    // A bad value inside a flow mapping over two lines: no line can be taken out alone.
    let text = VALID
        .replace(
            "\"127.0.0.1:9001\" }",
            "\"127.0.0.1:9001\",\n          weight: x }",
        )
        .replace("    pool: p\n", "    pool: nope\n    timeout: 5\n");
    let out = check("flow.yaml", &text);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("/flow.yaml:")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("/flow.yaml:8:14: routes[0].timeout"),
        "{err}"
    );
    assert!(
        lines[1].contains("/flow.yaml:13:19: pools[0].upstreams[0].weight"),
        "{err}"
    );
}

#[test]
fn check_steps_over_a_bad_value_in_a_one_line_flow_mapping() {
    // Audit c41: SPEC's own upstream style ended the listing at the bad weight.
    let text = VALID
        .replace("\"127.0.0.1:9001\" }", "\"127.0.0.1:9001\", weight: x }")
        .replace("    pool: p\n", "    pool: nope\n    timeout: 5\n");
    let out = check("flow.yaml", &text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("/flow.yaml:")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("/flow.yaml:7:11: unknown pool"), "{err}");
    assert!(
        lines[1].contains("/flow.yaml:8:14: routes[0].timeout"),
        "{err}"
    );
    assert!(
        lines[2].contains("/flow.yaml:12:43: pools[0].upstreams[0].weight"),
        "{err}"
    );
}

#[test]
fn options_before_the_command_apply_to_it() {
    // Audit c41: `switchyard -c FILE check` (as `nginx -c FILE -t`) was a usage error.
    let (_dir, path) = write_config("before.yaml", VALID);
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // An option only `run` uses is refused before `check` by name.
    let out = Command::new(BIN)
        .args(["--workers", "2", "check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--workers applies to `run`, not `check`"),
        "{}",
        stderr(&out)
    );
    // Before `run`, and the command's own option wins.
    let out = Command::new(BIN)
        .args(["--drain-timeout", "5"])
        .args(["run", "-c", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = Command::new(BIN)
        .args([
            "-c",
            "/nonexistent-outer.yaml",
            "run",
            "-c",
            "/nonexistent.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent.yaml:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_goes_on_past_a_bad_value_of_a_required_key() {
    // The audit's b40.yaml: `bind` is required, so taking its line out used to end the run.
    let text = "listeners:\n  - name: a\n    bind: \"127.0.0.1\"\nroutes:\n  - name: r\n    pool: nope\n    retrys: 1\nworkers: 0\n";
    let out = check("b40.yaml", text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let at: Vec<&str> = err
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.split(": ").next())
        .collect();
    assert_eq!(
        at,
        [
            "b40.yaml:3:11",
            "b40.yaml:6:11",
            "b40.yaml:7:5",
            "b40.yaml:8:10"
        ],
        "{err}"
    );
}

#[test]
fn check_reports_a_bad_duration_with_line_and_column() {
    let text = VALID.replace("    pool: p\n", "    pool: p\n    timeout: 5\n");
    let out = check("duration.yaml", &text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("duration.yaml:8:14:"), "{err}");
    assert!(err.contains("expected a duration with a unit"), "{err}");
}

#[test]
fn check_reports_a_yaml_syntax_error_with_line_and_column() {
    let out = check(
        "syntax.yaml",
        "listeners:\n  - name: a\n    bind: \"127.0.0.1:8080\"\nroutes: [\n  - name: r\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("syntax.yaml:5:3:"), "{err}");
}

#[test]
fn check_reports_a_missing_file() {
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/switchyard.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/switchyard.yaml:1:1: cannot read"));
}

#[test]
fn run_refuses_an_invalid_config_without_starting() {
    let (_dir, path) = write_config("bad-run.yaml", &VALID.replace("pool: p\n", "pool: nope\n"));
    let out = run_with(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad-run.yaml:7:11: unknown pool"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_names_the_bind_line_of_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let text = VALID.replace("127.0.0.1:8080", &addr) + "access_log: off\n";
    let (_dir, path) = write_config("busy.yaml", &text);
    let out = run_with(&path);
    assert_eq!(out.status.code(), Some(1));
    let want = format!("busy.yaml:3:11: listener \"a\": cannot bind {addr}: ");
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));

    // The admin API's address too.
    let text = VALID.replace("127.0.0.1:8080", "127.0.0.1:0")
        + &format!("access_log: off\nadmin:\n  bind: \"{addr}\"\n");
    let (_dir, path) = write_config("busy-admin.yaml", &text);
    let out = run_with(&path);
    assert_eq!(out.status.code(), Some(1));
    let want = format!("busy-admin.yaml:14:9: admin API: cannot bind {addr}: ");
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn workers_is_auto_or_a_positive_number() {
    // Audit 3 F1: 99999999999 was taken and aborted the start.
    for bad in ["0", "1.5", "many", "99999999999"] {
        let out = run_flag("--workers", bad);
        assert_eq!(out.status.code(), Some(2), "--workers {bad}");
        assert!(
            stderr(&out).contains("expected `auto` or a number from 1 to 1024"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_log_level_tracing_cannot_read_is_a_usage_error() {
    for bad in ["bogus===", "warning", "inf", ""] {
        let out = run_flag("--log-level", bad);
        assert_eq!(out.status.code(), Some(2), "--log-level {bad:?}");
        let want = format!("invalid value '{bad}' for '--log-level");
        assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    }
    // What is accepted: levels and directives (the run then fails on the missing file).
    for good in [
        "WARN",
        "info,switchyard=debug",
        "switchyard::proxy=trace",
        "3",
    ] {
        let out = run_flag("--log-level", good);
        assert_eq!(
            out.status.code(),
            Some(1),
            "--log-level {good:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn the_config_comes_from_the_flag_then_the_environment_then_the_working_directory() {
    let dir = TempDir::new("config-sources");
    let (named, local) = (dir.join("named.yaml"), dir.join("proxy.yaml"));
    std::fs::write(&named, VALID).unwrap();
    std::fs::write(&local, VALID.replace("name: r", "name: r2")).unwrap();
    let check = |env: Option<&str>, flag: Option<&Path>| {
        let mut command = Command::new(BIN);
        command.current_dir(dir.join("")).arg("check");
        command.env_remove("SWITCHYARD_CONFIG");
        if let Some(value) = env {
            command.env("SWITCHYARD_CONFIG", value);
        }
        if let Some(path) = flag {
            command.arg("--config").arg(path);
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let named_text = named.display().to_string();
    assert!(check(Some(&named_text), None).starts_with(&named_text));
    assert!(check(None, None).starts_with("proxy.yaml"));
    // Audit 3 F8: set but empty was a usage error (`a value is required for '--config'`).
    assert!(check(Some(""), None).starts_with("proxy.yaml"));
    assert!(check(Some("/nonexistent.yaml"), Some(&named)).starts_with(&named_text));
}

#[test]
fn drain_timeout_takes_durations_as_the_config_file_does() {
    // Audit 3 F8: it used another grammar (`5 seconds` taken, `5sec` suggested).
    for bad in ["5 seconds", "5sec", "5"] {
        let out = run_flag("--drain-timeout", bad);
        assert_eq!(out.status.code(), Some(2), "--drain-timeout {bad}");
        assert!(
            stderr(&out).contains("expected a duration with a unit, like 500ms, 2s or 1m"),
            "{}",
            stderr(&out)
        );
    }
    for good in ["0s", "1.5s", "2m", "500ms"] {
        let out = run_flag("--drain-timeout", good);
        assert_eq!(
            out.status.code(),
            Some(1),
            "--drain-timeout {good}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn an_unreadable_rust_log_is_warned_about_and_the_flag_used() {
    // Audit 3 F6: `warning` was taken as a target name and silenced every log, errors too.
    for bad in ["x===", "warning", "FATAL"] {
        let out = Command::new(BIN)
            .env("RUST_LOG", bad)
            .args(["run", "--config", "/nonexistent.yaml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("RUST_LOG is not a valid filter; using --log-level"),
            "{bad}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn version_and_help_are_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "demo", "--config"] {
        assert!(help.contains(word), "{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_and_exits_0() {
    let backend = Backend::start("b").await;
    let port = support::free_port();
    let text = format!(
        "listeners:\n  - name: a\n    bind: \"127.0.0.1:{port}\"\naccess_log: off\nroutes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    );
    let (_dir, path) = write_config("sigterm.yaml", &text);
    // No `run`: `switchyard --config FILE` runs the proxy.
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--workers", "auto"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(support::get(addr, "/").await.text(), "b");
    let slow = tokio::spawn(support::get(addr, "/slow/800"));
    support::eventually("the slow request to reach the backend", || {
        backend.requests() == 2
    })
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let reply = slow.await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "b".to_owned()));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
