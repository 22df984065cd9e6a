//! Replay of recorded tick files in three formats, with the original spacing divided by a
//! speed factor:
//!
//! - TrueFX: `USD/JPY,20130101 22:00:00.295,86.836,86.840` (UTC).
//! - HistData ASCII: `20200101 170000065,1.12100,1.12170,0` (EST, fixed UTC-05:00). The pair
//!   comes from the file name.
//! - QuantConnect LEAN: `1216,1.38421,1.38432`, milliseconds since midnight UTC of the date
//!   in the file name (`EURUSD-2014-05-09-...` or `20140509_eurusd_...`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{NaiveDate, NaiveDateTime};
use tokio::sync::watch;

use super::market::Market;
use super::symbols::{spec_by_name, SymbolSpec};

/// One recorded quote, prices in 1/100000 units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplayTick {
    pub time_ms: i64,
    pub bid: u64,
    pub ask: u64,
}

/// A parsed tick file for one symbol.
#[derive(Debug)]
pub(crate) struct ReplayFile {
    pub path: PathBuf,
    pub symbol: &'static SymbolSpec,
    pub ticks: Vec<ReplayTick>,
}

/// Parses a decimal price such as `1.38421` into 1/100000 units without going through floats.
pub(crate) fn parse_price(text: &str) -> Option<u64> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 5 && fraction[5..].bytes().any(|b| b != b'0') {
        return None;
    }
    let mut fraction = fraction[..fraction.len().min(5)].to_string();
    while fraction.len() < 5 {
        fraction.push('0');
    }
    whole.parse::<u64>().ok()?.checked_mul(100_000)?.checked_add(fraction.parse::<u64>().ok()?)
}

/// Reads the first six letters of the file name as a pair, such as `EURUSD` or `eurusd`.
fn pair_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.split(|c: char| !c.is_ascii_alphabetic()).find(|part| part.len() == 6).map(|p| p.to_ascii_uppercase())
}

/// Reads a `YYYY-MM-DD` or `YYYYMMDD` date from the file name.
fn date_from_file_name(path: &Path) -> Option<NaiveDate> {
    let name = path.file_name()?.to_str()?;
    let bytes = name.as_bytes();
    for start in 0..bytes.len() {
        // A date starts at a digit that does not continue a longer number or follow a sign.
        if !bytes[start].is_ascii_digit() || (start > 0 && bytes[start - 1].is_ascii_digit()) {
            continue;
        }
        let rest = &name[start..];
        if let Some(date) = rest.get(..10).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()) {
            return Some(date);
        }
        if let Some(date) = rest.get(..8).and_then(|s| NaiveDate::parse_from_str(s, "%Y%m%d").ok()) {
            return Some(date);
        }
    }
    None
}

/// Parses a tick file in any of the three formats, detected from its first row.
pub(crate) fn load(path: &Path) -> anyhow::Result<ReplayFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read replay file {}", path.display()))?;
    let rows: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).collect();
    let Some(first) = rows.first() else { bail!("replay file {} is empty", path.display()) };
    let columns: Vec<&str> = first.split(',').collect();

    let (pair, ticks) = if columns.len() == 4 && columns[0].contains('/') {
        (columns[0].to_string(), parse_rows(path, &rows, parse_truefx)?)
    } else if columns.len() == 4 && columns[0].contains(' ') {
        let pair = pair_from_file_name(path).with_context(|| format!("no pair such as EURUSD in the file name {}", path.display()))?;
        (pair, parse_rows(path, &rows, parse_histdata)?)
    } else if columns.len() == 3 {
        let pair = pair_from_file_name(path).with_context(|| format!("no pair such as EURUSD in the file name {}", path.display()))?;
        let date = date_from_file_name(path)
            .with_context(|| format!("no date such as 2014-05-09 in the file name {}, which LEAN rows need", path.display()))?;
        let midnight = date.and_hms_opt(0, 0, 0).map(|d| d.and_utc().timestamp_millis()).unwrap_or_default();
        (pair, parse_rows(path, &rows, |row| parse_lean(row, midnight))?)
    } else {
        bail!(
            "unrecognised row {first:?} in {}: expected TrueFX (pair,date time,bid,ask), HistData (date time,bid,ask,volume) or LEAN (ms,bid,ask)",
            path.display()
        );
    };

    let symbol = spec_by_name(&pair).with_context(|| format!("the simulator has no symbol {pair} for replay file {}", path.display()))?;
    Ok(ReplayFile { path: path.to_path_buf(), symbol, ticks })
}

fn parse_rows(path: &Path, rows: &[&str], parse: impl Fn(&str) -> Option<ReplayTick>) -> anyhow::Result<Vec<ReplayTick>> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| parse(row).with_context(|| format!("invalid row {} in {}: {row:?}", i + 1, path.display())))
        .collect()
}

fn parse_truefx(row: &str) -> Option<ReplayTick> {
    let mut columns = row.split(',');
    let _pair = columns.next()?;
    let time = NaiveDateTime::parse_from_str(columns.next()?, "%Y%m%d %H:%M:%S%.3f").ok()?;
    Some(ReplayTick { time_ms: time.and_utc().timestamp_millis(), bid: parse_price(columns.next()?)?, ask: parse_price(columns.next()?)? })
}

fn parse_histdata(row: &str) -> Option<ReplayTick> {
    let mut columns = row.split(',');
    let stamp = columns.next()?;
    let (date, time) = stamp.split_once(' ')?;
    if time.len() != 9 {
        return None;
    }
    let local = NaiveDateTime::parse_from_str(&format!("{date} {}", &time[..6]), "%Y%m%d %H%M%S").ok()?;
    let millis: i64 = time[6..].parse().ok()?;
    // HistData stamps are EST without daylight saving, a fixed UTC-05:00.
    let time_ms = local.and_utc().timestamp_millis() + millis + 5 * 3_600_000;
    Some(ReplayTick { time_ms, bid: parse_price(columns.next()?)?, ask: parse_price(columns.next()?)? })
}

fn parse_lean(row: &str, midnight_ms: i64) -> Option<ReplayTick> {
    let mut columns = row.split(',');
    let offset: i64 = columns.next()?.trim().parse().ok()?;
    Some(ReplayTick { time_ms: midnight_ms + offset, bid: parse_price(columns.next()?)?, ask: parse_price(columns.next()?)? })
}

/// Plays the file into the market with the recorded spacing divided by `speed`, and starts
/// again from the top at the end.
pub(crate) async fn run(market: Arc<Market>, file: ReplayFile, speed: f64, mut shutdown: watch::Receiver<bool>) {
    let speed = if speed > 0.0 { speed } else { 1.0 };
    tracing::info!(path = %file.path.display(), symbol = file.symbol.broker_name, ticks = file.ticks.len(), speed, "replay started");

    let Some(first_ms) = file.ticks.first().map(|t| t.time_ms) else { return };
    loop {
        // Each tick is due at its offset from the first one, divided by the speed. Sleeping
        // until that instant, rather than for each gap, keeps fast replays on schedule even
        // though timers cannot wait less than about a millisecond.
        let started = tokio::time::Instant::now();
        for tick in &file.ticks {
            let offset_ms = (tick.time_ms - first_ms).max(0);
            let due = started + Duration::from_secs_f64(offset_ms as f64 / 1000.0 / speed);
            if due > tokio::time::Instant::now() {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(due) => {}
                }
            } else if *shutdown.borrow() {
                return;
            }
            market.apply(file.symbol.id, tick.bid, tick.ask);
        }
        tracing::info!(path = %file.path.display(), "replay reached the end of the file and starts again");
        // Yield so a file of identical timestamps cannot starve the runtime.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKS: &str = "/work/shared/data/ticks";

    #[test]
    fn parse_price_is_exact() {
        assert_eq!(parse_price("1.38421"), Some(138_421));
        assert_eq!(parse_price("86.836"), Some(8_683_600));
        assert_eq!(parse_price("1.1"), Some(110_000));
        assert_eq!(parse_price("2031"), Some(203_100_000));
        assert_eq!(parse_price("1.1234500"), Some(112_345));
        assert_eq!(parse_price("1.123456"), None);
        assert_eq!(parse_price("-1.0"), None);
        assert_eq!(parse_price("abc"), None);
    }

    #[test]
    fn row_parsers_match_documented_examples() {
        let truefx = parse_truefx("USD/JPY,20130101 22:34:34.652,86.836,86.836").unwrap();
        assert_eq!(truefx.time_ms, 1_357_079_674_652);
        assert_eq!((truefx.bid, truefx.ask), (8_683_600, 8_683_600));

        // 17:00:00.065 EST is 22:00:00.065 UTC.
        let histdata = parse_histdata("20200101 170000065,1.12100,1.12170,0").unwrap();
        assert_eq!(histdata.time_ms, 1_577_916_000_065);

        let midnight = NaiveDate::from_ymd_opt(2014, 5, 9).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
        let lean = parse_lean("1216,1.38421,1.38432", midnight).unwrap();
        assert_eq!(lean.time_ms, 1_399_593_601_216);
        assert_eq!((lean.bid, lean.ask), (138_421, 138_432));
    }

    #[test]
    fn file_name_dates_and_pairs() {
        let lean = Path::new("/x/EURUSD-2014-05-11-oanda-lean.csv");
        assert_eq!(date_from_file_name(lean), NaiveDate::from_ymd_opt(2014, 5, 11));
        assert_eq!(pair_from_file_name(lean).as_deref(), Some("EURUSD"));
        let inner = Path::new("20140509_nzdusd_tick_quote.csv");
        assert_eq!(date_from_file_name(inner), NaiveDate::from_ymd_opt(2014, 5, 9));
        assert_eq!(pair_from_file_name(inner).as_deref(), Some("NZDUSD"));
    }

    #[test]
    fn real_files_load_in_all_formats() {
        let cases = [
            ("USDJPY-2013-01-01-truefx.csv", "USDJPY", 1_000, 1_357_077_600_295),
            ("EURUSD-2020-01-01-histdata.csv", "EURUSD", 9_500, 1_577_916_000_065),
            ("EURUSD-2014-05-11-oanda-lean.csv", "EURUSD", 2_643, 1_399_842_000_742),
        ];
        for (name, pair, rows, first_ms) in cases {
            let path = Path::new(TICKS).join(name);
            if !path.exists() {
                panic!("tick sample {} is missing", path.display());
            }
            let file = load(&path).unwrap();
            assert_eq!(super::super::symbols::normalise(file.symbol.broker_name), pair, "{name}");
            assert_eq!(file.ticks.len(), rows, "{name}");
            assert_eq!(file.ticks[0].time_ms, first_ms, "{name}");
            assert!(file.ticks.windows(2).all(|w| w[0].time_ms <= w[1].time_ms), "{name} goes backwards");
            assert!(file.ticks.iter().all(|t| t.bid <= t.ask), "{name} has a crossed quote");
        }
    }

    #[test]
    fn load_rejects_unknown_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("EURUSD-bad.csv");
        std::fs::write(&path, "just one column\n").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("unrecognised row"), "{error}");
    }
}
