//! Integration tests: real backends and a real proxy on 127.0.0.1 ephemeral ports, real HTTP.
//! One test binary with a module per topic (linking one binary per file is slow on two cores).

#![allow(unreachable_pub, missing_docs)]

mod support;

mod access_log;
mod admin;
mod admin_reload;
mod balancing;
mod build_errors;
mod cli;
mod cookies;
mod discovery;
mod errors;
mod forwarding;
mod grpc;
mod h2_frames;
mod h2_idle;
mod health;
mod http1;
mod large_bodies;
mod limits;
mod metrics;
mod pipelining;
mod reload;
mod request_id;
mod routing;
mod signals;
mod tls;
mod upstream_tls;
mod websocket;
