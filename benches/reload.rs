//! Reload cost: building a snapshot of 10,000 routes and 1,000 pools (fresh, and carrying
//! state over from a previous one), and the time from a config file write to the new
//! snapshot serving, file watcher and debounce included.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion};
use switchyard::config::{self, Config};
use switchyard::reload::watch::DEBOUNCE;
use switchyard::snapshot::{Shared, Snapshot};
use switchyard::{Server, ServerOptions};
use tokio::time::Instant;

/// A config of `routes` routes spread over `pools` pools of two upstreams each; `tag`
/// changes one route's prefix so that two texts differ.
fn big_config(routes: usize, pools: usize, tag: usize) -> String {
    let mut text = String::from(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\naccess_log: off\nroutes:\n",
    );
    for i in 0..routes {
        let host = match i % 3 {
            0 => format!("host: \"h{}.example.com\", ", i % 100),
            1 => format!("host: \"*.w{}.example.com\", ", i % 50),
            _ => String::new(),
        };
        let prefix = if i == 0 {
            format!("/tag{tag}/")
        } else {
            format!("/p{i}/")
        };
        text.push_str(&format!(
            "  - name: r{i}\n    match: {{ {host}path_prefix: \"{prefix}\" }}\n    pool: pool{}\n",
            i % pools
        ));
    }
    text.push_str("pools:\n");
    for j in 0..pools {
        let (hi, lo) = (j / 250, j % 250 + 1);
        text.push_str(&format!(
            "  - name: pool{j}\n    upstreams:\n      - {{ addr: \"10.1.{hi}.{lo}:8080\" }}\n      - {{ addr: \"10.2.{hi}.{lo}:8080\", weight: 2 }}\n"
        ));
    }
    text
}

fn parse(text: &str) -> Config {
    config::parse(Path::new("bench.yaml"), text).expect("the bench config is valid")
}

fn build(c: &mut Criterion) {
    let text = big_config(10_000, 1_000, 0);
    let mut group = c.benchmark_group("snapshot_build_10k_routes_1k_pools");
    group.sample_size(20);
    group.bench_function("parse_and_validate", |b| b.iter(|| parse(black_box(&text))));
    let config = parse(&text);
    group.bench_function("fresh", |b| {
        b.iter_batched(
            || config.clone(),
            |config| Snapshot::build(config, None).expect("builds"),
            BatchSize::LargeInput,
        )
    });
    let previous = Snapshot::build(config.clone(), None).expect("builds");
    group.bench_function("carry_over", |b| {
        b.iter_batched(
            || config.clone(),
            |config| Snapshot::build(config, Some(&previous)).expect("builds"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_to_serving(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("write_to_serving");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    println!("(debounce: {DEBOUNCE:?}, included in these times)");
    for routes in [10, 10_000] {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "switchyard-bench-reload-{}-{routes}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let path = dir.0.join("proxy.yaml");
        let pools = routes.min(1_000);
        std::fs::write(&path, big_config(routes, pools, 0)).expect("write");
        let options = ServerOptions {
            config_path: Some(path.clone()),
            watch: true,
            ..ServerOptions::default()
        };
        let config = config::load(&path).expect("valid");
        let server = runtime
            .block_on(Server::start_with(config, options))
            .expect("starts");
        let shared = server.shared().clone();
        let texts: Vec<String> = (1..=2).map(|t| big_config(routes, pools, t)).collect();
        let mut tag = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(routes), &routes, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    tag += 1;
                    total += write_and_wait(&shared, &path, &texts[tag % 2]);
                }
                total
            })
        });
        runtime.block_on(server.shutdown());
    }
    group.finish();
}

/// Writes `text` and returns how long until a new generation is serving.
fn write_and_wait(shared: &Arc<Shared>, path: &Path, text: &str) -> Duration {
    let before = shared.snapshot().generation;
    let started = Instant::now();
    std::fs::write(path, text).expect("write");
    while shared.snapshot().generation == before {
        assert!(started.elapsed() < Duration::from_secs(10), "no reload");
        std::thread::sleep(Duration::from_micros(100));
    }
    started.elapsed()
}

// A plain `main` rather than `criterion_group!`, whose generated `pub fn` has no doc and
// trips the crate's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    build(&mut criterion);
    write_to_serving(&mut criterion);
    criterion.final_summary();
}
