//! Segment files: how tasks of one run hand rows to each other.
//!
//! A task writes its output under the run's work directory as numbered
//! segments, each a JSON-lines file of rows (`000001.rows.jsonl`) and a
//! header written after it (`000001.meta.json`): the columns and their types,
//! the row count, and the watermark the segment completes. A segment without
//! its header is incomplete and ignored. Memory stays bounded by one segment.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schema::{ColumnType, Value};

/// The watermark a segment completes: once it and every earlier segment are
/// committed, extract task `task` has read everything up to `ts_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Epoch milliseconds.
    pub ts_ms: i64,
}

/// A segment's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Column names and types, in row order.
    pub columns: Vec<(String, ColumnType)>,
    /// Rows in the segment.
    pub rows: u64,
    /// The extract task whose watermark this segment carries.
    pub source_task: String,
    /// The watermark it completes, if any.
    pub watermark: Option<Watermark>,
}

/// Each output of a transform with its columns and types, as its segments
/// will hold them, or why its query cannot run: found by planning the
/// queries without data.
pub type Planned =
    std::collections::BTreeMap<workflows::SqlIdent, Result<Vec<(String, ColumnType)>, Unplannable>>;

/// Why a transform's output cannot be made, whatever the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unplannable(pub String);

/// What a run's extract read: from where in event time (`None`: the
/// beginning), and when it started (epoch ms, wall clock). The extract
/// records it in its output directory for the tasks after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFrom {
    /// The lower bound of event time read.
    pub since_ms: Option<i64>,
    /// When the extract started reading.
    pub started_ms: i64,
}

const READ_FROM: &str = "read_from.json";

/// Records what a run's extract read, in its output directory `dir`.
///
/// # Errors
/// Writing the file failed.
pub fn write_read_from(dir: &Path, read: ReadFrom) -> std::io::Result<()> {
    fs::write(dir.join(READ_FROM), serde_json::to_string(&read)?)
}

/// What the extract whose output is in `dir` read in this run; `None` if it
/// did not run.
pub fn read_from(dir: &Path) -> Option<ReadFrom> {
    serde_json::from_str(&fs::read_to_string(dir.join(READ_FROM)).ok()?).ok()
}

/// The directory holding output `name` of a task that makes several (a
/// transform's outputs, one per table).
pub fn output_dir(task_dir: &Path, name: &str) -> PathBuf {
    task_dir.join(name)
}

fn rows_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:06}.rows.jsonl"))
}

fn meta_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:06}.meta.json"))
}

/// Writes one segment: the rows, then the header. Neither is synced to
/// disk: only the tasks of the same run, in this process, read a segment,
/// and a run that dies is never resumed from its work directory (the next
/// run starts again from the watermarks), so a sync would buy nothing and
/// cost a disk flush per segment.
///
/// # Errors
/// A write failed.
pub fn write(dir: &Path, seq: u32, meta: &Meta, rows: &[Vec<Value>]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut out = BufWriter::new(File::create(rows_path(dir, seq))?);
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let tmp = dir.join(format!("{seq:06}.meta.json.tmp"));
    fs::write(&tmp, serde_json::to_vec(meta)?)?;
    fs::rename(tmp, meta_path(dir, seq))
}

/// The complete segments in `dir`, in order. A missing directory has none.
///
/// # Errors
/// A header could not be read.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u32, Meta)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".meta.json")
            .and_then(|s| s.parse::<u32>().ok())
        {
            let meta: Meta = serde_json::from_slice(&fs::read(meta_path(dir, seq))?)?;
            out.push((seq, meta));
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Reads a segment's rows.
///
/// # Errors
/// The file is missing or damaged.
pub fn read(dir: &Path, seq: u32) -> std::io::Result<Vec<Vec<Value>>> {
    let file = BufReader::new(File::open(rows_path(dir, seq))?);
    let mut rows = Vec::new();
    for line in file.lines() {
        rows.push(serde_json::from_str(&line?)?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_incomplete_segments_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta {
            columns: vec![
                ("a".into(), ColumnType::Int),
                ("b".into(), ColumnType::String),
            ],
            rows: 2,
            source_task: "extract".into(),
            watermark: Some(Watermark { ts_ms: 7 }),
        };
        let rows = vec![
            vec![Value::Int(1), Value::Str("x \"😀\"".into())],
            vec![Value::Int(2), Value::Null],
        ];
        write(dir.path(), 1, &meta, &rows).unwrap();
        fs::write(rows_path(dir.path(), 2), "[1]\n").unwrap();
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed, vec![(1, meta)]);
        assert_eq!(read(dir.path(), 1).unwrap(), rows);
    }
}
