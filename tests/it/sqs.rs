//! The live feed from an SQS-compatible server (`CUTOVER_TEST_SQS_ENDPOINT`,
//! which `tests/run.sh` starts with moto; LocalStack or real SQS work the
//! same): the seeded events published with duplicates, shuffled, poison
//! mixed in; `cutover consume` leaves the warehouse a nightly `run --all`
//! over the same events leaves, and reports equal to the legacy ones, also
//! when it is killed midway and restarted.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::star::{self, STAR};
use crate::support::{self, cutover_with, ok, snapshot};

/// Bodies that are not events, each with the reason it is quarantined.
const POISON: &[(&str, &str)] = &[
    ("this is not json", "not JSON"),
    ("[1, 2, 3]", "not a JSON object"),
    (r#"{"hello": "world"}"#, "not an event"),
    (
        r#"{"type": "presentation.viewed", "ts": {"$date": "yesterday"}}"#,
        "not MongoDB Extended JSON",
    ),
];

/// An SQS endpoint and a client for it.
pub(crate) struct Sqs {
    endpoint: String,
    client: aws_sdk_sqs::Client,
}

impl Sqs {
    /// The test server, or `None` (the test is skipped, and says so) when
    /// none is set.
    pub(crate) async fn from_env() -> Option<Self> {
        let endpoint = support::server("CUTOVER_TEST_SQS_ENDPOINT")?;
        let creds = aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "tests");
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(creds)
            .build();
        Some(Self {
            endpoint,
            client: aws_sdk_sqs::Client::from_conf(config),
        })
    }

    /// A new queue with this visibility timeout; returns its URL.
    pub(crate) async fn queue(&self, visibility_secs: u32) -> Result<String> {
        let name = format!(
            "cutover-t-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let out = self
            .client
            .create_queue()
            .queue_name(&name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_secs.to_string(),
            )
            .send()
            .await
            .context("creating a queue")?;
        out.queue_url.context("a queue URL")
    }

    /// Sends every body, ten per request.
    pub(crate) async fn publish(&self, url: &str, bodies: &[String]) -> Result<()> {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await?;
            anyhow::ensure!(out.failed.is_empty(), "sends failed: {:?}", out.failed);
        }
        Ok(())
    }

    /// Messages visible plus in flight.
    pub(crate) async fn depth(&self, url: &str) -> Result<u64> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?;
        Ok(out
            .attributes()
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum())
    }

    pub(crate) async fn delete(&self, url: &str) {
        let _ = self.client.delete_queue().queue_url(url).send().await;
    }

    /// The `cutover consume` command for a queue.
    pub(crate) fn consume(
        &self,
        url: &str,
        warehouse: &str,
        work: &Path,
        args: &[&str],
    ) -> Command {
        self.cutover("consume", url, warehouse, work, args)
    }

    /// A `cutover` command given the queue and the SQS settings.
    pub(crate) fn cutover(
        &self,
        command: &str,
        url: &str,
        warehouse: &str,
        work: &Path,
        args: &[&str],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg(command)
            .args(args)
            .env("CUTOVER_SQS_QUEUE_URL", url)
            .env("CUTOVER_WAREHOUSE_URL", warehouse)
            .env("CUTOVER_WORK_DIR", work)
            .env("CUTOVER_DAGS", support::root().join("dags"))
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_PROFILE")
            .env_remove("RUST_LOG");
        cmd
    }
}

/// Every line of the events file sent one to three times, shuffled, with
/// the poison bodies mixed in.
fn feed(events_file: &Path, seed: u64) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut bodies = Vec::new();
    for line in std::fs::read_to_string(events_file).unwrap().lines() {
        for _ in 0..rng.gen_range(1..=3) {
            bodies.push(line.to_owned());
        }
    }
    for (body, _) in POISON {
        bodies.push((*body).to_owned());
        bodies.push((*body).to_owned());
    }
    bodies.shuffle(&mut rng);
    bodies
}

/// The fact and dimension tables.
pub(crate) async fn star_tables(url: &str) -> Result<Vec<Vec<String>>> {
    let pool = support::pool(url).await?;
    let mut out = Vec::new();
    for (table, cols) in STAR.iter().filter(|(t, _)| !t.starts_with("cutover_")) {
        out.push(snapshot(&pool, table, cols).await?);
    }
    pool.close().await;
    Ok(out)
}

/// The quarantine of invalid events (poison bodies aside).
async fn event_quarantine(url: &str) -> Result<Vec<String>> {
    let pool = support::pool(url).await?;
    let rows = snapshot(
        &pool,
        "cutover_quarantine WHERE dag <> '(sqs)'",
        &["dag", "task", "doc_id", "reason", "raw"],
    )
    .await?;
    pool.close().await;
    Ok(rows)
}

/// The reasons recorded for poison bodies, one per distinct body.
async fn poison_reasons(url: &str) -> Result<Vec<String>> {
    let pool = support::pool(url).await?;
    let rows = snapshot(
        &pool,
        "cutover_quarantine WHERE dag = '(sqs)'",
        &["reason", "raw"],
    )
    .await?;
    pool.close().await;
    Ok(rows)
}

/// Micro-batch runs that committed.
const SQS_RUNS: &str =
    "SELECT COUNT(*) FROM cutover_runs WHERE trigger_kind = 'sqs' AND state = 'succeeded'";

fn stdout(out: Output) -> String {
    ok(out)
}

/// A nightly `run --all` over the same events into `warehouse`: from
/// MongoDB when a server is set, else from the events file.
async fn nightly(events_file: &Path, warehouse: &str, dir: &Path) -> Result<()> {
    let work = dir.join(format!("nightly-{}", uuid::Uuid::new_v4().simple()));
    match std::env::var("CUTOVER_TEST_MONGO_URL") {
        Ok(mongo) => {
            let (client, db) = crate::mongo::load_events(&mongo, events_file).await?;
            let dags = support::dags_for_database(&work, &db)?;
            ok(cutover_with(
                &mongo,
                warehouse,
                &work,
                &dags,
                &["run", "--all"],
            ));
            client.database(&db).drop().await?;
        }
        Err(_) => {
            ok(support::cutover(
                events_file,
                warehouse,
                &work,
                &["run", "--all"],
            ));
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_feed_loads_what_the_nightly_run_loads() -> Result<()> {
    let Some(sqs) = Sqs::from_env().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    // moto scans a whole queue on every request, so a few hundred messages
    // keep it quick; BENCHMARKS.md has the larger runs.
    let events_file = support::seed(dir.path(), 250, 41);
    let source = events_file.display().to_string();
    let dags = support::root().join("dags");
    let bodies = feed(&events_file, 41);
    let nightlies = support::warehouses().await?;
    for (wh, nightly_wh) in support::warehouses()
        .await?
        .iter()
        .zip(&nightlies)
        .filter(|(w, _)| w.name != "postgres")
    {
        let queue = sqs.queue(30).await?;
        sqs.publish(&queue, &bodies).await?;
        let work = dir.path().join(format!("work-{}", wh.name));
        let run = sqs
            .consume(
                &queue,
                &wh.url,
                &work,
                &[
                    "--until-idle",
                    "3",
                    "--wait",
                    "1",
                    "--batch-messages",
                    "100",
                    "--batch-age",
                    "1s",
                ],
            )
            .output()?;
        let out = stdout(run);
        // At least once: a server may deliver a message twice (moto does
        // when two receives race), so more may be counted than were sent,
        // never fewer.
        let consumed: u64 = out
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count of messages: {out}"));
        assert!(
            consumed >= bodies.len() as u64,
            "all {} messages consumed on {}: {out}",
            bodies.len(),
            wh.name
        );
        assert_eq!(
            sqs.depth(&queue).await?,
            0,
            "the queue is empty on {}",
            wh.name
        );

        star::assert_reports_equal(&source, &wh.url, &work, &dags, "app", None, wh.name);

        nightly(&events_file, &nightly_wh.url, dir.path()).await?;
        assert_eq!(
            star_tables(&wh.url).await?,
            star_tables(&nightly_wh.url).await?,
            "the feed and the nightly run differ on {}",
            wh.name
        );
        assert_eq!(
            event_quarantine(&wh.url).await?,
            event_quarantine(&nightly_wh.url).await?,
            "the same invalid events are quarantined on {}",
            wh.name
        );
        let poison = poison_reasons(&wh.url).await?;
        assert_eq!(poison.len(), POISON.len(), "{poison:?}");
        for (body, reason) in POISON {
            assert!(
                poison
                    .iter()
                    .any(|p| p.contains(reason) && p.contains(&format!("{:?}", body))),
                "poison {body} quarantined with `{reason}`: {poison:?}"
            );
        }

        let status = stdout(cutover_with(
            &source,
            &wh.url,
            &work,
            &dags,
            &["status", "--format", "json"],
        ));
        let status: serde_json::Value = serde_json::from_str(&status)?;
        let consumer = &status["consumers"][0];
        assert_eq!(consumer["state"], "stopped", "{status}");
        assert_eq!(consumer["messages"], consumed, "{status}");
        assert!(
            consumer["deleted"].as_u64() >= Some(bodies.len() as u64),
            "{status}"
        );
        assert!(
            consumer["poison"].as_u64() >= Some((POISON.len() * 2) as u64),
            "{status}"
        );
        assert!(consumer["lag_ms"].as_i64().is_some(), "{status}");
        sqs.delete(&queue).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_consumer_killed_midway_and_restarted_loses_and_doubles_nothing() -> Result<()> {
    let Some(sqs) = Sqs::from_env().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 250, 43);
    let bodies = feed(&events_file, 43);
    let nightlies = support::warehouses().await?;
    for (wh, nightly_wh) in support::warehouses()
        .await?
        .iter()
        .zip(&nightlies)
        .filter(|(w, _)| w.name != "postgres")
    {
        // A short visibility timeout, so what the killed consumer held
        // comes back soon.
        let queue = sqs.queue(4).await?;
        sqs.publish(&queue, &bodies).await?;
        let work = dir.path().join(format!("work-{}", wh.name));
        let mut child = sqs
            .consume(
                &queue,
                &wh.url,
                &work,
                &["--wait", "1", "--batch-messages", "40", "--batch-age", "1s"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        support::wait_for_count(&wh.url, SQS_RUNS, 3, &mut child, Duration::from_secs(180)).await?;
        child.kill()?;
        child.wait()?;
        let left = sqs.depth(&queue).await?;
        assert!(left > 0, "the kill left work on {}", wh.name);

        ok(sqs
            .consume(
                &queue,
                &wh.url,
                &work,
                &["--until-idle", "6", "--wait", "1", "--batch-age", "1s"],
            )
            .output()?);
        assert_eq!(
            sqs.depth(&queue).await?,
            0,
            "the queue is empty on {}",
            wh.name
        );

        nightly(&events_file, &nightly_wh.url, dir.path()).await?;
        assert_eq!(
            star_tables(&wh.url).await?,
            star_tables(&nightly_wh.url).await?,
            "killed and restarted, the feed differs from the nightly run on {}",
            wh.name
        );
        let distinct: BTreeSet<&str> = POISON.iter().map(|(b, _)| *b).collect();
        assert_eq!(poison_reasons(&wh.url).await?.len(), distinct.len());
        sqs.delete(&queue).await;
    }
    Ok(())
}

/// A TCP forwarder that can be cut and restored: a warehouse that goes away
/// and comes back at the same address.
struct Cable {
    port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Cable {
    async fn new(target: &str) -> Result<Self> {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        let mut cable = Self {
            port,
            target: target.to_owned(),
            task: None,
        };
        cable.connect().await?;
        Ok(cable)
    }

    async fn connect(&mut self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when the task is aborted) closes every
            // forwarded connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        Ok(())
    }

    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[tokio::test]
async fn the_consumer_survives_the_warehouse_going_away_and_stops_cleanly_on_sigterm() -> Result<()>
{
    let Some(sqs) = Sqs::from_env().await else {
        return Ok(());
    };
    let Some(wh) = support::mysql_warehouse().await? else {
        return Ok(());
    };
    let nightly_wh = support::mysql_warehouse().await?.expect("set above");
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 200, 47);
    let bodies = feed(&events_file, 47);
    let (first, second) = bodies.split_at(bodies.len() / 2);

    // The consumer reaches the warehouse only through the cable.
    let host = wh
        .url
        .split('/')
        .nth(2)
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    let mut cable = Cable::new(&host).await?;
    let through = wh.url.replace(&host, &format!("127.0.0.1:{}", cable.port));

    let queue = sqs.queue(4).await?;
    sqs.publish(&queue, first).await?;
    let work = dir.path().join("work");
    let mut child = sqs
        .consume(
            &queue,
            &through,
            &work,
            &["--wait", "1", "--batch-messages", "40", "--batch-age", "1s"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    support::wait_for_count(&wh.url, SQS_RUNS, 1, &mut child, Duration::from_secs(120)).await?;
    let pool = support::pool(&wh.url).await?;

    cable.cut();
    sqs.publish(&queue, second).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    cable.connect().await?;

    let started = Instant::now();
    while sqs.depth(&queue).await? > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the consumer did not finish the queue after the warehouse came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    // Waited for off the runtime, which must keep the cable forwarding
    // while the consumer finishes.
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    assert!(
        out.status.success(),
        "SIGTERM ends the consumer cleanly: {}",
        out.status
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(report.contains("consumed"), "{report}");

    let consumer = support::snapshot(&pool, "cutover_consumers", &["state"]).await?;
    assert_eq!(consumer, ["Some(\"stopped\")"], "{logs}");
    pool.close().await;

    nightly(&events_file, &nightly_wh.url, dir.path()).await?;
    assert_eq!(
        star_tables(&wh.url).await?,
        star_tables(&nightly_wh.url).await?,
        "after the outage, the feed differs from the nightly run"
    );
    sqs.delete(&queue).await;
    cable.cut();
    Ok(())
}

/// `GET /metrics` from a `--metrics-addr` endpoint.
async fn scrape(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    anyhow::ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    Ok(response)
}

#[tokio::test]
async fn the_scheduler_hosts_the_feed_and_serves_metrics() -> Result<()> {
    let Some(sqs) = Sqs::from_env().await else {
        return Ok(());
    };
    let wh = support::warehouses().await?.swap_remove(0);
    let nightly_wh = support::warehouses().await?.swap_remove(0);
    let dir = tempfile::tempdir()?;
    let events_file = support::seed(dir.path(), 150, 53);
    let queue = sqs.queue(10).await?;
    sqs.publish(&queue, &feed(&events_file, 53)).await?;
    let work = dir.path().join("work");
    // A nightly run of `users` first, so that it has a watermark.
    ok(support::cutover(
        &events_file,
        &wh.url,
        &work,
        &["run", "users"],
    ));

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut child = sqs
        .cutover(
            "schedule",
            &queue,
            &wh.url,
            &work,
            &[
                "--with-sqs",
                "--wait",
                "1",
                "--batch-messages",
                "100",
                "--batch-age",
                "1s",
                "--metrics-addr",
                &metrics_addr,
            ],
        )
        .env("CUTOVER_SOURCE_URL", &events_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(child.try_wait()?.is_none(), "the scheduler ended early");
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the scheduler did not consume the queue"
        );
        if sqs.depth(&queue).await? == 0 {
            break;
        }
    }
    let metrics = scrape(port).await?;
    for series in [
        r#"cutover_runs{dag="users",state="succeeded"}"#,
        r#"cutover_runs_finished_total{dag="views",trigger="sqs",state="succeeded"}"#,
        r#"cutover_task_duration_seconds_bucket{le="+Inf",dag="views",task="load_views",state="succeeded"}"#,
        r#"cutover_rows_total{dag="views",task="extract_views",kind="read"}"#,
        r#"cutover_watermark_lag_seconds{dag="users",task="extract_users"}"#,
        "cutover_consumer_lag_seconds{consumer=",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }

    let (report, _) = support::terminate(child).await?;
    assert!(report.contains("scheduler stopped"), "{report}");
    assert!(report.contains("consumer stopped"), "{report}");

    nightly(&events_file, &nightly_wh.url, dir.path()).await?;
    assert_eq!(
        star_tables(&wh.url).await?,
        star_tables(&nightly_wh.url).await?,
        "the feed the scheduler consumed differs from the nightly run"
    );
    sqs.delete(&queue).await;
    Ok(())
}
