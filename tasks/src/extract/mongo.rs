//! `extract.mongo`: reads the events of some types from the event
//! collection (or the embedded events file), incrementally from the
//! committed watermark minus a lookback window, checks every document against
//! the declared columns, quarantines the invalid ones with their reason and
//! writes the rest as typed segments for the transform.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use workflows::{
    KindInfo, RateLimit, Role, SettingProblem, Task, TaskContext, TaskError, TaskReport, Window,
};

use crate::error::{from_io, from_sqlx};
use crate::expected::SeenBuilder;
use crate::progress::Progress;
use crate::quarantine::{self, Rejected};
use crate::schema::{read_row, ColumnType, Columns, Value};
use crate::segment::{self, write_read_from, Meta, ReadFrom, Watermark};
use crate::source::{Item, Query, Selection, Source};
use crate::warehouse::Warehouse;

/// The kind.
pub const KIND: KindInfo = KindInfo {
    name: "extract.mongo",
    summary: "read events of some types from MongoDB (or the events file) since the watermark; quarantine invalid ones",
    role: Role::Extract,
    fields: || serde_aux::serde_introspection::serde_introspect::<Config>(),
};

/// The settings of an `extract.mongo` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The MongoDB database holding the events.
    #[serde(default = "default_database")]
    pub database: String,
    /// The collection holding the events.
    #[serde(default = "default_collection")]
    pub collection: String,
    /// The event types to read; others are not read.
    pub types: Vec<String>,
    /// An extra MongoDB query filter on the documents, e.g.
    /// `{ "payload.channel" = { "$ne" = "embed" } }`: the operators of
    /// [`crate::filter::Filter`], which mean the same on the events file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<toml::Table>,
    /// The field holding the event type.
    #[serde(default = "default_type_field")]
    pub type_field: String,
    /// The field holding the event time, a BSON date; the watermark follows it.
    #[serde(default = "default_ts_field")]
    pub ts_field: String,
    /// The column that identifies an event; duplicates of it are one event.
    #[serde(default = "default_key")]
    pub key: String,
    /// How far before the watermark each run reads again, to pick up events
    /// that arrived late, e.g. `2h`.
    #[serde(default = "default_lookback", with = "workflows::duration")]
    pub lookback: Duration,
    /// How far ahead of this machine's clock an event's time may be and
    /// still count for the watermark, e.g. `5m`. An event dated later (a
    /// wrong clock, a typo such as 9999-12-31) is loaded, as the legacy
    /// analytics count it, but the watermark does not move past now plus
    /// this, so incremental runs go on reading what arrives next.
    #[serde(default = "default_clock_skew", with = "workflows::duration")]
    pub clock_skew: Duration,
    /// Rows per segment, and documents per MongoDB round trip.
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroU32,
    /// At most this many documents read per second, to spare a live
    /// MongoDB; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<NonZeroU32>,
    /// The columns to read, by name: path, type and constraints.
    pub columns: Columns,
}

fn default_database() -> String {
    "app".into()
}
fn default_collection() -> String {
    "events".into()
}
fn default_type_field() -> String {
    "type".into()
}
fn default_ts_field() -> String {
    "ts".into()
}
fn default_key() -> String {
    "event_id".into()
}
fn default_lookback() -> Duration {
    Duration::ZERO
}
/// The largest `clock_skew` accepted.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(366 * 86_400);

fn default_clock_skew() -> Duration {
    Duration::from_secs(300)
}
fn default_batch_size() -> NonZeroU32 {
    NonZeroU32::new(20_000).expect("non-zero")
}

impl Config {
    /// Checks without I/O.
    pub fn check(&self) -> Vec<SettingProblem> {
        let mut out = Vec::new();
        if self.types.is_empty() {
            out.push(SettingProblem::field("types", "lists no event type"));
        }
        if self.clock_skew > MAX_CLOCK_SKEW {
            out.push(SettingProblem::field(
                "clock_skew",
                format!(
                    "`{}` is more than {}: a clock that wrong is no clock",
                    workflows::duration::format(self.clock_skew),
                    workflows::duration::format(MAX_CLOCK_SKEW)
                ),
            ));
        }
        if self.columns.is_empty() {
            out.push(SettingProblem::field("columns", "declares no column"));
        }
        if let Some(filter) = &self.filter {
            if let Err(e) = crate::filter::Filter::from_toml(filter) {
                out.push(SettingProblem::field("filter", e.to_string()));
            }
        }
        if !self.columns.keys().any(|c| c.as_str() == self.key) {
            out.push(SettingProblem::field(
                "key",
                format!("`{}` is not one of the columns", self.key),
            ));
        }
        let ts_col = self.columns.values().any(|c| {
            c.ty == ColumnType::Timestamp
                && matches!(&c.path, crate::schema::Paths::One(p) if *p == self.ts_field)
        });
        if !ts_col {
            out.push(SettingProblem::field(
                "columns",
                format!(
                    "no column of type timestamp reads `{}`, the ts_field",
                    self.ts_field
                ),
            ));
        }
        out
    }

    /// The columns of the segments this extract writes, in order, with
    /// their types (an ObjectId is written as its hex string).
    pub fn segment_columns(&self) -> Vec<(String, ColumnType)> {
        self.columns
            .iter()
            .map(|(n, c)| {
                let ty = if c.ty == ColumnType::ObjectId {
                    ColumnType::String
                } else {
                    c.ty
                };
                (n.as_str().to_owned(), ty)
            })
            .collect()
    }

    /// The name of the timestamp column that reads `ts_field`.
    pub fn ts_column(&self) -> Option<&str> {
        self.columns.iter().find_map(|(name, c)| {
            (c.ty == ColumnType::Timestamp
                && matches!(&c.path, crate::schema::Paths::One(p) if *p == self.ts_field))
            .then_some(name.as_str())
        })
    }

    /// The source query from `since_ms`.
    pub fn query(&self, since_ms: Option<i64>, until_ms: Option<i64>) -> Query {
        Query {
            database: self.database.clone(),
            collection: self.collection.clone(),
            type_field: self.type_field.clone(),
            types: self.types.clone(),
            ts_field: self.ts_field.clone(),
            filter: self.filter.as_ref().map(|f| {
                crate::filter::Filter::from_toml(f).expect("checked when the DAG was loaded")
            }),
            since_ms,
            until_ms,
            batch_size: self.batch_size.get(),
        }
    }

    /// The events it reads and how a document reads as a row, for the
    /// tasks that check it.
    pub fn selection(&self) -> Selection {
        Selection {
            query: self.query(None, None),
            key: self.key.clone(),
            ts_column: self.ts_column().unwrap_or_default().to_owned(),
            columns: self.columns.clone(),
        }
    }

    /// Where the next run starts reading: the watermark minus the lookback.
    pub fn since(&self, watermark: Option<i64>) -> Option<i64> {
        watermark.map(|w| w - self.lookback.as_millis() as i64)
    }
}

/// The task.
pub struct ExtractMongo {
    /// Its settings.
    pub config: Config,
    /// Where the events are.
    pub source: Source,
    /// Where watermarks and quarantine are.
    pub warehouse: Warehouse,
    /// Read only this window of event time instead of from the watermark
    /// (backfills); such a read never moves the watermark.
    pub window: Option<Window>,
    /// The limit on the read rate (the task's `max_rate`, or a backfill's
    /// shared one).
    pub limit: Option<Arc<RateLimit>>,
    /// Whether it shows a progress counter.
    pub progress: Progress,
    /// A hash of the DAG's definition, part of the source mark.
    pub definition: u64,
}

/// What a pass over the source found.
#[derive(Debug, Default)]
pub struct Pass {
    /// Documents read.
    pub read: u64,
    /// Valid rows.
    pub rows: u64,
    /// Invalid documents.
    pub quarantined: u64,
    /// The greatest timestamp seen, of events not in the future.
    pub max_ts: Option<i64>,
    /// Events dated later than now plus the clock skew: loaded, but not
    /// counted in the watermark.
    pub future: u64,
    /// The latest of those.
    pub max_future_ts: Option<i64>,
}

impl ExtractMongo {
    /// Records the source's mark for this nightly run; when the run may
    /// skip unchanged work and the DAG's last run with a mark succeeded
    /// with the same mark, the same DAG definition and a watermark no one
    /// else moved since, returns that run's id: nothing is new.
    async fn unchanged(
        &self,
        ctx: &TaskContext,
        query: &Query,
    ) -> Result<Option<String>, TaskError> {
        let Some(source) = self.source.mark(query).await? else {
            return Ok(None);
        };
        let wh = &self.warehouse;
        let mark = format!("{source}; dag {:016x}", self.definition);
        let watermark = wh
            .watermark(&ctx.dag, &ctx.task)
            .await
            .map_err(|e| from_sqlx("reading the watermark", e))?;
        let previous = wh
            .previous_mark(&ctx.dag, &ctx.task, &ctx.run_id)
            .await
            .map_err(|e| from_sqlx("reading the last source mark", e))?;
        // A retried attempt finds it recorded already.
        match wh
            .record_mark(&ctx.run_id, &ctx.dag, &ctx.task, &mark, watermark)
            .await
        {
            Err(e) if !workflows::db::unique_violation(&e) => {
                return Err(from_sqlx("recording the source mark", e))
            }
            _ => {}
        }
        let Some(previous) = previous else {
            return Ok(None);
        };
        if !ctx.skip_unchanged || !previous.succeeded || previous.mark != mark {
            return Ok(None);
        }
        // The watermark is where that run left it: it wrote it, or it
        // read it and did not move it.
        let writer = wh
            .watermark_writer(&ctx.dag, &ctx.task)
            .await
            .map_err(|e| from_sqlx("reading the watermark", e))?;
        let kept = writer.as_deref() == Some(previous.run_id.as_str())
            || watermark == previous.watermark_ms;
        Ok(kept.then_some(previous.run_id))
    }
}

#[async_trait]
impl Task for ExtractMongo {
    async fn run(&self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let cfg = &self.config;
        let feed = self.source.is_feed();
        // The feed and backfill windows leave the watermark to nightly runs.
        let keeps_watermark = feed || self.window.is_some();
        let since = if feed {
            None
        } else if let Some(w) = self.window {
            Some(w.from_ms)
        } else {
            let watermark = self
                .warehouse
                .watermark(&ctx.dag, &ctx.task)
                .await
                .map_err(|e| from_sqlx("reading the watermark", e))?;
            // A watermark already past now (written before the clock skew
            // was checked) is read from now, so the run reads what arrives.
            let horizon = chrono::Utc::now().timestamp_millis() + cfg.clock_skew.as_millis() as i64;
            cfg.since(watermark.map(|w| w.min(horizon)))
        };
        let query = cfg.query(since, self.window.map(|w| w.until_ms));
        if !keeps_watermark {
            if let Some(previous) = self.unchanged(ctx, &query).await? {
                return Ok(TaskReport {
                    summary: format!(
                        "nothing new since run {previous}: the source, the watermark and the DAG are as they were"
                    ),
                    unchanged: true,
                    ..TaskReport::default()
                });
            }
        }
        let out_dir = ctx.output_dir(&ctx.task);
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| from_io("creating the output directory", e))?;
        let read = ReadFrom {
            since_ms: since,
            started_ms: chrono::Utc::now().timestamp_millis(),
        };
        write_read_from(&out_dir, read).map_err(|e| from_io("recording the range read", e))?;

        let columns = cfg.segment_columns();
        let ts_index = cfg
            .columns
            .keys()
            .position(|c| Some(c.as_str()) == cfg.ts_column())
            .ok_or_else(|| TaskError::fatal("no timestamp column"))?;
        let key_index = cfg.columns.keys().position(|c| c.as_str() == cfg.key);
        // What it reads, summed up per day for the verify tasks after it
        // (not for the feed's micro-batches, which no verify follows).
        let mut seen = (!feed)
            .then(|| SeenBuilder::new(since, self.window.map(|w| w.until_ms), read.started_ms));
        let ordered = self.source.is_ordered();
        let progress = self.progress.counter(&format!("{} {}", ctx.dag, ctx.task));

        let horizon_ms = read.started_ms + cfg.clock_skew.as_millis() as i64;
        let mut stream = self.source.stream(&query).await?;
        let mut pass = Pass::default();
        let mut rows: Vec<Vec<Value>> = Vec::with_capacity(cfg.batch_size.get() as usize);
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut seq = 0u32;
        let mut flush = |rows: &mut Vec<Vec<Value>>,
                         max_ts: Option<i64>,
                         last: bool|
         -> Result<(), TaskError> {
            if rows.is_empty() && !last {
                return Ok(());
            }
            seq += 1;
            let meta = Meta {
                columns: columns.clone(),
                rows: rows.len() as u64,
                source_task: ctx.task.clone(),
                // An ordered source's watermark may advance segment by segment;
                // an unordered one's only when everything is committed.
                watermark: if keeps_watermark {
                    None
                } else if ordered || last {
                    max_ts.map(|ts_ms| Watermark { ts_ms })
                } else {
                    None
                },
            };
            segment::write(&out_dir, seq, &meta, rows)
                .map_err(|e| from_io("writing a segment", e))?;
            rows.clear();
            Ok(())
        };
        while let Some(item) = stream.next().await {
            if let Some(limit) = &self.limit {
                if pass.read % limit.step() == 0 {
                    limit.until_ready().await;
                }
            }
            pass.read += 1;
            progress.inc(1);
            match item? {
                Item::Doc(doc, line) => match read_row(&doc, &cfg.columns) {
                    Ok(row) => {
                        if let Value::Int(ts) = row[ts_index] {
                            if ts > horizon_ms {
                                pass.future += 1;
                                pass.max_future_ts =
                                    Some(pass.max_future_ts.map_or(ts, |m| m.max(ts)));
                            } else {
                                pass.max_ts = Some(pass.max_ts.map_or(ts, |m| m.max(ts)));
                            }
                        }
                        if let (Some(seen), Some(Value::Str(key)), Value::Int(ts)) =
                            (seen.as_mut(), key_index.map(|i| &row[i]), &row[ts_index])
                        {
                            let stored = doc
                                .get_object_id("_id")
                                .ok()
                                .map(|o| o.timestamp().timestamp_millis());
                            seen.add(key, *ts, stored);
                        }
                        rows.push(row);
                        pass.rows += 1;
                        if rows.len() >= cfg.batch_size.get() as usize {
                            flush(&mut rows, pass.max_ts, false)?;
                        }
                    }
                    Err(reason) => rejected.push(Rejected::from_doc(
                        &doc,
                        &cfg.key,
                        &cfg.type_field,
                        reason.to_string(),
                        line.map(|n| self.source.line_location(n)).as_deref(),
                    )),
                },
                Item::Unreadable { raw, reason, line } => rejected.push(Rejected::unreadable(
                    raw,
                    reason,
                    Some(self.source.line_location(line)),
                )),
            }
            if rejected.len() >= 1000 {
                pass.quarantined += rejected.len() as u64;
                quarantine::write(&self.warehouse, &ctx.dag, &ctx.task, &ctx.run_id, &rejected)
                    .await
                    .map_err(|e| from_sqlx("writing the quarantine", e))?;
                rejected.clear();
            }
        }
        flush(&mut rows, pass.max_ts, true)?;
        pass.quarantined += rejected.len() as u64;
        quarantine::write(&self.warehouse, &ctx.dag, &ctx.task, &ctx.run_id, &rejected)
            .await
            .map_err(|e| from_sqlx("writing the quarantine", e))?;
        if let Some(seen) = seen {
            seen.finish()
                .write(&out_dir)
                .map_err(|e| from_io("recording what was read", e))?;
        }
        progress.finish_and_clear();
        let from = match since {
            _ if feed => "the feed".to_owned(),
            Some(ms) if self.window.is_some() => format!(
                "the window {} to {}",
                workflows::time::format_ms(ms),
                workflows::time::format_ms(self.window.map_or(ms, |w| w.until_ms))
            ),
            None => "the beginning".to_owned(),
            Some(ms) => workflows::time::format_ms(ms),
        };
        let mut summary = format!(
            "read {} documents from {from}: {} valid rows, {} quarantined",
            pass.read, pass.rows, pass.quarantined
        );
        if pass.future > 0 {
            let latest = pass.max_future_ts.map_or_else(String::new, |t| {
                format!(" (the latest {})", workflows::time::format_ms(t))
            });
            tracing::warn!(
                dag = %ctx.dag,
                task = %ctx.task,
                events = pass.future,
                clock_skew = %workflows::duration::format(cfg.clock_skew),
                "events dated in the future: loaded, but the watermark does not move past now"
            );
            summary.push_str(&format!(
                "; {} dated after now + {}{latest}: loaded, watermark held at now",
                pass.future,
                workflows::duration::format(cfg.clock_skew)
            ));
        }
        Ok(TaskReport {
            unchanged: false,
            rows_read: pass.read,
            rows_written: pass.rows,
            rows_quarantined: pass.quarantined,
            summary,
        })
    }
}

/// Builds the task: a read from the watermark, or of `window`; at the
/// rate of `limit`, else of the task's own `max_rate`.
pub fn build(
    config: Config,
    source: Source,
    warehouse: Warehouse,
    read: &workflows::ReadOptions,
    progress: Progress,
    definition: u64,
) -> Arc<dyn Task> {
    let limit = read
        .limit
        .clone()
        .or_else(|| config.max_rate.map(|r| Arc::new(RateLimit::new(r))));
    Arc::new(ExtractMongo {
        config,
        source,
        warehouse,
        window: read.window,
        limit,
        progress,
        definition,
    })
}
