//! `tickgate history`: fetch historical trendbars and write them as CSV to stdout.
//!
//! cTrader limits the time span of one `ProtoOAGetTrendbarsReq` by period and rejects a larger
//! one with INCORRECT_BOUNDARIES, so the range is split into chunks of the allowed span. Within
//! a chunk, `hasMore` means the server cut the response; the request is repeated with
//! `toTimestamp` moved back to the earliest bar received.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use super::connection::{upstream, ConnectionArgs, Upstream};
use super::UsageError;
use crate::protocol::{pb, trendbar, ApiError, Bar, FrameCodec, Message};
use crate::session::symbols::{SymbolDetails, SymbolTable};
use crate::session::transport::{self, Stream};
use crate::session::SessionConfig;
use crate::simulator::SimulatorConfig;

/// Historical requests are limited to 5 per second per connection; 250 ms apart stays below it.
const HISTORICAL_SPACING: Duration = Duration::from_millis(250);

/// How long one request may wait for its response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a rate-limited request is retried before the command gives up.
const RATE_LIMIT_RETRIES: u32 = 5;

/// Maximum number of requests in one run, so a server that keeps sending `hasMore` cannot loop it.
const MAX_REQUESTS: usize = 10_000;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Symbol, in any spelling cTrader uses (EURUSD, EUR/USD).
    pub symbol: String,

    /// Bar period.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Period::M1)]
    pub period: Period,

    /// Start of the range (inclusive): YYYY-MM-DD or an RFC 3339 time such as 2024-03-01T12:00:00Z.
    #[arg(long, value_parser = parse_time)]
    pub from: DateTime<Utc>,

    /// End of the range (exclusive), in the same forms; defaults to now.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,

    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Trendbar periods, named as cTrader names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Period {
    M1,
    M2,
    M3,
    M4,
    M5,
    M10,
    M15,
    M30,
    H1,
    H4,
    H12,
    D1,
    W1,
    Mn1,
}

impl Period {
    fn to_proto(self) -> pb::ProtoOaTrendbarPeriod {
        use pb::ProtoOaTrendbarPeriod as P;
        match self {
            Period::M1 => P::M1,
            Period::M2 => P::M2,
            Period::M3 => P::M3,
            Period::M4 => P::M4,
            Period::M5 => P::M5,
            Period::M10 => P::M10,
            Period::M15 => P::M15,
            Period::M30 => P::M30,
            Period::H1 => P::H1,
            Period::H4 => P::H4,
            Period::H12 => P::H12,
            Period::D1 => P::D1,
            Period::W1 => P::W1,
            Period::Mn1 => P::Mn1,
        }
    }

    /// Returns the largest `to - from` span one request may cover, in milliseconds. These are
    /// the limits of Spotware's OpenAPI.Net client (TrendbarsMaximumTime.cs, 2022); the current
    /// protocol files no longer state them.
    pub fn max_span_ms(self) -> i64 {
        match self {
            Period::M1 | Period::M2 | Period::M3 | Period::M4 | Period::M5 => 302_400_000,
            Period::M10 | Period::M15 | Period::M30 | Period::H1 => 21_168_000_000,
            Period::H4 | Period::H12 | Period::D1 => 31_622_400_000,
            Period::W1 | Period::Mn1 => 158_112_000_000,
        }
    }
}

/// Splits `[from, to)` into consecutive chunks no longer than `span`.
pub fn split_range(from_ms: i64, to_ms: i64, span: i64) -> Vec<(i64, i64)> {
    let mut chunks = Vec::new();
    let mut start = from_ms;
    while start < to_ms {
        let end = to_ms.min(start.saturating_add(span));
        chunks.push((start, end));
        start = end;
    }
    chunks
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(time) = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S") {
        return Ok(time.and_utc());
    }
    if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(format!("`{value}` is not a time: use YYYY-MM-DD or RFC 3339 such as 2024-03-01T12:00:00Z (UTC)"))
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let to = args.to.unwrap_or_else(Utc::now);
    if args.from >= to {
        return Err(UsageError(format!(
            "--from {} is not before --to {}: give a range whose start comes first",
            args.from.to_rfc3339(),
            to.to_rfc3339()
        ))
        .into());
    }
    // 1. Connect to cTrader with credentials, else to a simulator started for this run.
    let simulator = SimulatorConfig { listen: ([127, 0, 0, 1], 0).into(), ..SimulatorConfig::default() };
    let Upstream { config, simulator } = upstream(&args.connection, simulator).await?;

    let result = fetch_and_print(&config, &args.symbol, args.period, args.from.timestamp_millis(), to.timestamp_millis()).await;
    if let Some(simulator) = simulator {
        simulator.shutdown().await;
    }
    result
}

async fn fetch_and_print(target: &SessionConfig, symbol: &str, period: Period, from_ms: i64, to_ms: i64) -> anyhow::Result<()> {
    let tls = transport::tls_config_with_pem(target.ca_file.as_deref(), target.ca_pem.as_deref())
        .map_err(|error| UsageError(error.to_string()))?;
    let stream = transport::connect(&target.host, target.port, &target.server_name, tls).await?;
    let mut client = Client { framed: Framed::new(stream, FrameCodec::default()), next_id: 0 };
    let account = target.account_id;

    // 2. Application auth, then account auth.
    client
        .request(Message::ApplicationAuthReq(pb::ProtoOaApplicationAuthReq {
            client_id: target.client_id.clone(),
            client_secret: target.client_secret.clone(),
            ..Default::default()
        }))
        .await
        .context("application auth failed")?;
    client
        .request(Message::AccountAuthReq(pb::ProtoOaAccountAuthReq {
            ctid_trader_account_id: account,
            access_token: target.access_token.clone(),
            ..Default::default()
        }))
        .await
        .context("account auth failed; if the access token expired, run `tickgate stream` or `serve` once to refresh it")?;

    // 3. Resolve the symbol's id and digits.
    let Message::SymbolsListRes(list) = client
        .request(Message::SymbolsListReq(pb::ProtoOaSymbolsListReq { ctid_trader_account_id: account, ..Default::default() }))
        .await?
    else {
        bail!("unexpected response to the symbols list request");
    };
    let table = SymbolTable::from_light_symbols(&list.symbol);
    let Some(entry) = table.get(symbol) else {
        return Err(UsageError(format!(
            "symbol `{symbol}` not found on this account; available: {}",
            table.names().join(", ")
        ))
        .into());
    };
    let symbol_id = entry.id;
    let Message::SymbolByIdRes(details) = client
        .request(Message::SymbolByIdReq(pb::ProtoOaSymbolByIdReq {
            ctid_trader_account_id: account,
            symbol_id: vec![symbol_id],
            ..Default::default()
        }))
        .await?
    else {
        bail!("unexpected response to the symbol details request");
    };
    let digits = details
        .symbol
        .first()
        .map(SymbolDetails::from_symbol)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .map_or(5, |d| d.digits);

    // 4. Fetch chunk by chunk, following `hasMore` backwards within each chunk.
    let mut bars: BTreeMap<i64, Bar> = BTreeMap::new();
    let mut requests = 0;
    for (chunk_from, chunk_to) in split_range(from_ms, to_ms, period.max_span_ms()) {
        let mut chunk_to = chunk_to;
        loop {
            requests += 1;
            if requests > MAX_REQUESTS {
                bail!("stopped after {MAX_REQUESTS} history requests; request a shorter range");
            }
            tokio::time::sleep(HISTORICAL_SPACING).await;
            let request = pb::ProtoOaGetTrendbarsReq {
                ctid_trader_account_id: account,
                from_timestamp: Some(chunk_from),
                to_timestamp: Some(chunk_to),
                period: period.to_proto() as i32,
                symbol_id,
                ..Default::default()
            };
            let Message::GetTrendbarsRes(response) = client.request_historical(Message::GetTrendbarsReq(request)).await? else {
                bail!("unexpected response to the trendbars request");
            };

            let mut earliest = chunk_to;
            for raw in &response.trendbar {
                let bar = trendbar::decode(raw, digits).context("server sent an invalid trendbar")?;
                earliest = earliest.min(bar.time_ms);
                if (from_ms..to_ms).contains(&bar.time_ms) {
                    bars.insert(bar.time_ms, bar);
                }
            }
            debug!(chunk_from, chunk_to, bars = response.trendbar.len(), has_more = ?response.has_more, "trendbars received");

            // Continue only while the server reports more bars and the window shrinks.
            if response.has_more != Some(true) || earliest <= chunk_from || earliest >= chunk_to {
                break;
            }
            chunk_to = earliest;
        }
    }
    info!(symbol, bars = bars.len(), requests, "history fetched");

    // 5. Write CSV, oldest bar first.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "timestamp,open,high,low,close,volume")?;
    for bar in bars.values() {
        let time = DateTime::from_timestamp_millis(bar.time_ms).unwrap_or_default();
        writeln!(
            out,
            "{},{},{},{},{},{}",
            time.format("%Y-%m-%dT%H:%M:%SZ"),
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume
        )?;
    }
    out.flush()?;
    Ok(())
}

/// A sequential request/response client: one request in flight at a time.
struct Client {
    framed: Framed<Stream, FrameCodec>,
    next_id: u64,
}

impl Client {
    /// Sends a request and returns its response; an error response becomes an error.
    async fn request(&mut self, message: Message) -> anyhow::Result<Message> {
        self.next_id += 1;
        let id = format!("history-{}", self.next_id);
        let name = message.name();
        self.framed.send(message.encode(Some(id.clone()))).await?;

        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .with_context(|| format!("{name} timed out after {} s", REQUEST_TIMEOUT.as_secs()))?
                .with_context(|| format!("connection closed while waiting for the {name} response"))??;

            // Pushed events (heartbeats, spots) carry no id; skip them and anything for others.
            if frame.client_msg_id.as_deref() != Some(id.as_str()) {
                continue;
            }
            let response = Message::decode(&frame)?;
            if let Some(error) = ApiError::from_message(&response) {
                return Err(RequestRejected(error).into());
            }
            return Ok(response);
        }
    }

    /// Sends a historical request, retrying after a pause when the rate limit is hit.
    async fn request_historical(&mut self, message: Message) -> anyhow::Result<Message> {
        let mut attempt = 0;
        loop {
            match self.request(message.clone()).await {
                Err(error) => match error.downcast_ref::<RequestRejected>() {
                    Some(RequestRejected(api)) if api.is_rate_limited() && attempt < RATE_LIMIT_RETRIES => {
                        attempt += 1;
                        let pause = Duration::from_secs(api.retry_after_s.unwrap_or(1).max(1));
                        warn!(attempt, pause_ms = pause.as_millis() as u64, code = %api.code, "history request rate-limited; retrying");
                        tokio::time::sleep(pause).await;
                    }
                    _ => return Err(error),
                },
                ok => return ok,
            }
        }
    }
}

/// An error response from the server to a request.
#[derive(Debug, thiserror::Error)]
#[error("cTrader rejected the request: {0}")]
struct RequestRejected(ApiError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_range_covers_range_without_overlap() {
        let chunks = split_range(0, 1_000, 300);
        assert_eq!(chunks, vec![(0, 300), (300, 600), (600, 900), (900, 1_000)]);
    }

    #[test]
    fn split_range_empty_when_from_not_before_to() {
        assert!(split_range(10, 10, 5).is_empty());
        assert!(split_range(20, 10, 5).is_empty());
    }

    #[test]
    fn parse_time_accepts_date_and_rfc3339() {
        assert_eq!(parse_time("2024-03-01").unwrap().timestamp_millis(), 1_709_251_200_000);
        assert_eq!(parse_time("2024-03-01T12:00:00Z").unwrap().timestamp_millis(), 1_709_294_400_000);
        assert_eq!(parse_time("2024-03-01T12:00:00").unwrap().timestamp_millis(), 1_709_294_400_000);
    }

    #[test]
    fn parse_time_names_bad_value() {
        let error = parse_time("yesterday").unwrap_err();
        assert!(error.contains("`yesterday`"), "{error}");
    }
}
