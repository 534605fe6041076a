//! lepus-perf as a user runs it: the built binary against the broker at `AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`), its JSON output read back, every
//! wait bounded.

use std::{process::Stdio, time::Duration};

use lepus::{Connection, QueueDeleteOptions};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    time::timeout,
};

const BIN: &str = env!("CARGO_BIN_EXE_lepus-perf");
/// A whole run: a 2 s test, plus connecting, draining and closing, on a busy machine.
const RUN_BOUND: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unique_queue(name: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("lepus-perf.test.{name}.{}.{nanos}", std::process::id())
}

fn lepus_perf(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

/// Runs to the end (bounded) and returns the exit code, stdout and stderr.
async fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let child = lepus_perf(args).spawn().expect("the binary starts");
    let output = timeout(RUN_BOUND, child.wait_with_output()).await.expect("lepus-perf ends in time").expect("output");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
    (output.status.code(), stdout, stderr)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))).collect()
}

fn count(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} is a count in {v}"))
}

#[track_caller]
fn assert_ordered_percentiles(latency: &Value) {
    let p = |q: &str| latency[q].as_u64().unwrap_or_else(|| panic!("{q} in {latency}"));
    assert!(p("p50") <= p("p95") && p("p95") <= p("p99"), "percentiles out of order: {latency}");
}

/// Deletes the queue and returns how many messages it still held.
async fn delete_queue(queue: &str) -> u32 {
    let conn = timeout(RUN_BOUND, Connection::connect(&url())).await.expect("connect in time").expect("connect");
    let channel = timeout(RUN_BOUND, conn.open_channel()).await.expect("open in time").expect("channel");
    let left = timeout(RUN_BOUND, channel.queue_delete(queue, QueueDeleteOptions::default()))
        .await
        .expect("delete in time")
        .expect("queue.delete");
    let _ = timeout(RUN_BOUND, conn.close()).await;
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_run_with_confirms_counts_every_message() {
    let queue = unique_queue("counts");
    let url = url();
    // Not auto-delete, so the queue outlives the run and its emptiness can be checked;
    // x-expires removes it after a minute if this test dies before deleting it.
    let (code, stdout, stderr) = run(&[
        "--json",
        "-h",
        &url,
        "-z",
        "2",
        "-x",
        "1",
        "-y",
        "1",
        "-c",
        "100",
        "-f",
        "mandatory",
        "-u",
        &queue,
        "--auto-delete",
        "false",
        "--queue-args",
        "x-expires=60000",
    ])
    .await;
    let left = delete_queue(&queue).await;
    assert_eq!(code, Some(0), "stderr: {stderr}\nstdout: {stdout}");
    let lines = json_lines(&stdout);
    let (summary, intervals) = lines.split_last().expect("at least the summary");
    assert_eq!(summary["type"], "summary", "{summary}");
    assert!(!intervals.is_empty(), "a 2 s run prints a line a second: {stdout}");
    for line in intervals {
        assert_eq!(line["type"], "interval", "{line}");
        if !line["latency_us"].is_null() {
            assert_ordered_percentiles(&line["latency_us"]);
        }
    }

    let sent = count(summary, "sent");
    assert!(sent > 0, "{summary}");
    // After publishing stops the run waits for every outstanding confirm (up to
    // --drain-timeout, 10 s) before it ends, so none is in flight at the end: the window of
    // 100 is fully settled, and a classic queue with room nacks nothing.
    assert_eq!(count(summary, "confirmed"), sent, "{summary}");
    assert_eq!(count(summary, "nacked"), 0, "{summary}");
    assert_eq!(count(summary, "unconfirmed"), 0, "{summary}");
    // Mandatory publishes to the default exchange with the queue's name: all routed.
    assert_eq!(count(summary, "returned"), 0, "{summary}");
    // The consumer received (and acked) every routed message, and left none behind.
    assert_eq!(count(summary, "received"), count(summary, "confirmed") - count(summary, "returned"), "{summary}");
    assert_eq!(summary["drained"], true, "{summary}");
    assert_eq!(left, 0, "messages left in the queue after the run: {summary}");
    assert_eq!(summary["error"], Value::Null, "{summary}");
    assert_eq!(summary["interrupted"], false, "{summary}");

    let latency = &summary["latency_us"];
    assert_eq!(count(latency, "samples"), sent, "every message timed: {summary}");
    assert_ordered_percentiles(latency);
    assert!(
        count(latency, "min") <= count(latency, "p50") && count(latency, "p99") <= count(latency, "max"),
        "{latency}"
    );
    assert!(summary["elapsed_s"].as_f64().expect("elapsed_s") >= 2.0, "{summary}");
}

#[tokio::test]
async fn invalid_arguments_exit_2_naming_the_problem() {
    let (code, _, stderr) = run(&["-h", "amqp://ok", "-h", "http://user:secret@host"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--uri #2") && stderr.contains("scheme"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password is not echoed: {stderr}");

    let (code, _, stderr) = run(&["-s", "4"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--size"), "{stderr}");

    let (code, _, stderr) = run(&["--queue-args", "x-max-length"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("KEY=VALUE"), "{stderr}");

    let (code, _, stderr) = run(&["--no-such-option"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--no-such-option"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_broker_exits_1_naming_each_uri_tried() {
    // Nothing listens on these loopback ports: refused at once.
    let (code, stdout, stderr) = run(&["-h", "amqp://127.0.0.1:1,amqp://127.0.0.1:2", "-z", "1", "--json"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to any broker"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1") && stderr.contains("127.0.0.1:2"), "{stderr}");
    assert!(stdout.is_empty(), "no run, no summary: {stdout}");
}

/// Sends SIGINT to the child, as Ctrl-C in a terminal does.
fn interrupt(child: &Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill runs");
    assert!(status.success(), "kill -INT {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_run_and_prints_the_summary() {
    let url = url();
    // No -z and no -C: the run goes on until interrupted. The server-named queue is the
    // run's own and is deleted at its end.
    let mut child = lepus_perf(&["--json", "-h", &url, "-c", "100", "-r", "2000"]).spawn().expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let first = timeout(RUN_BOUND, lines.next_line()).await.expect("a line within the bound").expect("read");
    let first: Value = serde_json::from_str(&first.expect("a first line")).expect("JSON");
    assert_eq!(first["type"], "interval", "{first}");

    interrupt(&child);
    let mut rest = Vec::new();
    while let Some(line) = timeout(RUN_BOUND, lines.next_line()).await.expect("output ends in time").expect("read") {
        rest.push(line);
    }
    let status = timeout(RUN_BOUND, child.wait()).await.expect("exits in time").expect("status");
    assert_eq!(status.code(), Some(0), "a clean stop");
    let summary: Value = serde_json::from_str(rest.last().expect("a summary")).expect("JSON");
    assert_eq!(summary["type"], "summary", "{summary}");
    assert_eq!(summary["interrupted"], true, "{summary}");
    assert!(count(&summary, "sent") > 0, "{summary}");
    assert_eq!(summary["error"], Value::Null, "{summary}");
}

/// Runs `rabbitmqctl` (on a blocking thread, bounded) and returns its standard output.
async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    let shown = args.join(" ");
    let output = timeout(
        RUN_BOUND,
        tokio::task::spawn_blocking(move || std::process::Command::new("rabbitmqctl").args(&args).output()),
    )
    .await
    .expect("rabbitmqctl ends in time")
    .expect("joined")
    .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {shown}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_broker_closes_mid_run_exits_1_saying_why() {
    let url = url();
    let id = unique_queue("closed");
    let mut child =
        lepus_perf(&["--json", "-h", &url, "-d", &id, "-c", "100", "-r", "1000"]).spawn().expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let first = timeout(RUN_BOUND, lines.next_line()).await.expect("a line within the bound").expect("read");
    assert!(first.is_some(), "the run is under way");

    // Only this run's consumer connection is closed (`--id` makes its name unique); the
    // node and everyone else's connections are untouched.
    let listing = rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"]).await;
    let name = format!("\"lepus-perf {id} consumer 0\"");
    let pid = listing
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} among the connections:\n{listing}"))
        .to_owned();
    rabbitmqctl(&["close_connection", &pid, "closed by the lepus-perf test"]).await;

    let mut rest = Vec::new();
    while let Some(line) = timeout(RUN_BOUND, lines.next_line()).await.expect("output ends in time").expect("read") {
        rest.push(line);
    }
    let status = timeout(RUN_BOUND, child.wait()).await.expect("exits in time").expect("status");
    assert_eq!(status.code(), Some(1), "a broker-closed connection fails the run");
    let summary: Value = serde_json::from_str(rest.last().expect("a summary")).expect("JSON");
    assert_eq!(summary["type"], "summary", "{summary}");
    assert_eq!(summary["id"], id.as_str(), "{summary}");
    let error = summary["error"].as_str().unwrap_or_else(|| panic!("an error in {summary}"));
    assert!(error.starts_with("consumer 0:") && error.contains("CONNECTION_FORCED"), "{error}");
    assert!(error.contains("closed by the lepus-perf test"), "{error}");
    assert_eq!(summary["interrupted"], false, "{summary}");
}
