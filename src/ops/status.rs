//! `/status` on the admin listener: one HTML page, with no script and no external asset, of what an
//! operator looks at first: each dependency's readiness, the active codes, codes issued, activated,
//! expired and poisoned per minute over the last hour (inline SVG), each queue's depth and each
//! shard's oldest message's age, the activation lag's p50 and p99, and the last warnings and errors. The figures are
//! read from the registry `/metrics` renders, so the two agree. No code is ever shown: codes are in
//! no metric and in no log line.

use super::health::Readiness;
use super::metrics::{ACTIVATION_LAG, HTTP_REQUESTS, MESSAGES, OLDEST_VISIBLE_AGE, QUEUE_LENGTH};
use super::recent::{Problem, RECENT};
use chrono::{DateTime, SecondsFormat, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How often the per-minute totals are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Samples kept: an hour of minutes, and the one before.
const KEPT_SAMPLES: usize = 61;
/// How long the page waits for the database's count.
const COUNT_TIMEOUT: Duration = Duration::from_secs(3);

/// The series charted per minute, by name.
const SERIES: [&str; 4] = ["issued", "activated", "expired", "poisoned"];

/// The routes whose successful answers issue a code.
const ISSUING_ROUTES: [&str; 2] = ["/api/v1/getcode", "/api/v1/codes"];

/// One line of the Prometheus text: a series and its value.
#[derive(Debug, PartialEq)]
struct Line {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Line {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The series of a Prometheus text exposition (comments and unreadable lines skipped).
fn parse(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Line> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Line {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y \"q\""` as pairs.
fn parse_labels(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        text = &rest[end + 1..];
    }
    Some(labels)
}

/// The charted series' totals in `lines`, in [`SERIES`] order.
fn totals(lines: &[Line]) -> [f64; 4] {
    let issued = lines
        .iter()
        .filter(|l| l.name == HTTP_REQUESTS)
        .filter(|l| {
            l.label("route")
                .is_some_and(|r| ISSUING_ROUTES.contains(&r))
        })
        .filter(|l| l.label("status").is_some_and(|s| s.starts_with('2')))
        .map(|l| l.value)
        .sum();
    let outcome = |name: &str| {
        lines
            .iter()
            .filter(|l| l.name == MESSAGES && l.label("outcome") == Some(name))
            .map(|l| l.value)
            .sum()
    };
    [
        issued,
        outcome("activated"),
        outcome("expired"),
        outcome("poisoned"),
    ]
}

/// The status page's memory: the charted totals once a minute.
pub struct StatusBoard {
    metrics: PrometheusHandle,
    readiness: Readiness,
    samples: Mutex<VecDeque<[f64; 4]>>,
}

impl StatusBoard {
    /// A board reading `metrics` and checking `readiness`; with a runtime, it samples every minute
    /// until it is dropped.
    pub fn start(metrics: PrometheusHandle, readiness: Readiness) -> Arc<Self> {
        let board = Arc::new(Self {
            metrics,
            readiness,
            samples: Mutex::new(VecDeque::new()),
        });
        board.sample();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sample_every_minute(Arc::downgrade(&board)));
        }
        board
    }

    fn sample(&self) {
        let now = totals(&parse(&self.metrics.render()));
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == KEPT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(now);
    }

    /// The page, as of now.
    pub async fn page(&self) -> String {
        let lines = parse(&self.metrics.render());
        let now_totals = totals(&lines);
        let samples: Vec<[f64; 4]> = {
            let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
            samples.iter().copied().chain([now_totals]).collect()
        };
        let failing = self.readiness.check().await;
        let active = match &self.readiness.store {
            None => None,
            Some(store) => Some(
                match tokio::time::timeout(COUNT_TIMEOUT, store.count_valid(Utc::now())).await {
                    Ok(Ok(count)) => Ok(count),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {COUNT_TIMEOUT:?}")),
                },
            ),
        };
        render(&Figures {
            at: Utc::now(),
            parts: self.parts(&failing),
            active,
            totals: now_totals,
            samples,
            lines,
            problems: RECENT.newest_first(),
        })
    }

    /// Each part readiness checks, with its reason when it fails.
    fn parts(&self, failing: &[(&'static str, String)]) -> Vec<(&'static str, Option<String>)> {
        let checked = [
            ("database", self.readiness.store.is_some()),
            ("queue", !self.readiness.queues.is_empty()),
            ("shards", self.readiness.unpolled.is_some()),
        ];
        checked
            .into_iter()
            .filter(|(_, checked)| *checked)
            .map(|(part, _)| {
                let reason = failing
                    .iter()
                    .find(|(p, _)| *p == part)
                    .map(|(_, r)| r.clone());
                (part, reason)
            })
            .collect()
    }
}

async fn sample_every_minute(board: Weak<StatusBoard>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match board.upgrade() {
            Some(board) => board.sample(),
            None => return,
        }
    }
}

/// What one page shows.
struct Figures {
    at: DateTime<Utc>,
    parts: Vec<(&'static str, Option<String>)>,
    active: Option<Result<u64, String>>,
    totals: [f64; 4],
    /// Totals a minute apart, oldest first, the last one now.
    samples: Vec<[f64; 4]>,
    lines: Vec<Line>,
    problems: Vec<Problem>,
}

/// `text` safe inside HTML text and attribute values.
fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:960px}\
h1{font-size:20px}h2{font-size:15px;margin-top:24px}table{border-collapse:collapse}\
td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}\
.ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}.charts{display:flex;flex-wrap:wrap;gap:16px}\
figure{margin:0}figcaption{font-size:12px;color:#555}ol{padding-left:20px}\
li{font-family:ui-monospace,monospace;font-size:12px;margin:2px 0;word-break:break-all}";

fn render(f: &Figures) -> String {
    let mut page = String::new();
    let ready = f.parts.iter().all(|(_, reason)| reason.is_none());
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>codewatch status</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>\
         <h1>codewatch status</h1><p>As of <time id=\"at\">{}</time> (UTC); this page does not refresh itself. \
         Overall: <span id=\"ready\" class=\"{}\">{}</span>.</p>",
        f.at.to_rfc3339_opts(SecondsFormat::Secs, true),
        if ready { "ok" } else { "bad" },
        if ready { "ready" } else { "not ready" },
    );
    page.push_str("<h2>Dependencies</h2><table id=\"parts\">");
    for (part, reason) in &f.parts {
        let _ = match reason {
            None => write!(
                page,
                "<tr data-part=\"{part}\"><td>{part}</td><td class=\"ok\">ready</td></tr>"
            ),
            Some(reason) => write!(
                page,
                "<tr data-part=\"{part}\"><td>{part}</td><td class=\"bad\">failing: {}</td></tr>",
                html(reason)
            ),
        };
    }
    page.push_str("</table><h2>Codes</h2><table>");
    let active = match &f.active {
        None => "– (no database in this process)".to_owned(),
        Some(Ok(n)) => n.to_string(),
        Some(Err(reason)) => format!("unknown: {}", html(reason)),
    };
    let _ = write!(
        page,
        "<tr><td>active (valid now)</td><td class=\"n\" id=\"active-codes\">{active}</td></tr>"
    );
    for (name, total) in SERIES.iter().zip(f.totals) {
        let _ = write!(
            page,
            "<tr><td>{name} since start</td><td class=\"n\" id=\"total-{name}\">{total:.0}</td></tr>"
        );
    }
    page.push_str("</table><h2>Per minute, last hour</h2><div class=\"charts\">");
    for (i, name) in SERIES.iter().enumerate() {
        let per_minute: Vec<f64> = f
            .samples
            .windows(2)
            .map(|pair| (pair[1][i] - pair[0][i]).max(0.0))
            .collect();
        page.push_str(&chart(name, &per_minute));
    }
    page.push_str("</div><h2>Queues (sampled every 15 s)</h2>");
    queues(&mut page, &f.lines);
    page.push_str("<h2>Activation lag</h2><table>");
    for (quantile, id, label) in [("0.5", "lag-p50", "p50"), ("0.99", "lag-p99", "p99")] {
        let value = f
            .lines
            .iter()
            .find(|l| l.name == ACTIVATION_LAG && l.label("quantile") == Some(quantile))
            .map_or_else(|| "–".to_owned(), |l| format!("{:.1}", l.value * 1000.0));
        let _ = write!(
            page,
            "<tr><td>{label} (ms)</td><td class=\"n\" id=\"{id}\">{value}</td></tr>"
        );
    }
    page.push_str("</table><h2>Last warnings and errors</h2>");
    if f.problems.is_empty() {
        page.push_str("<p id=\"no-problems\">None since start.</p>");
    } else {
        page.push_str("<ol id=\"problems\">");
        for p in &f.problems {
            let _ = write!(
                page,
                "<li>{} {} {}</li>",
                p.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                p.level,
                html(&p.text)
            );
        }
        page.push_str("</ol>");
    }
    page.push_str("<p><a href=\"/metrics\">/metrics</a> · <a href=\"/readyz\">/readyz</a> · <a href=\"/healthz\">/healthz</a></p></body></html>");
    page
}

/// Each queue's depth and, for a shard's main queue, its oldest visible message's age, as the worker
/// last sampled them (every 15 s).
fn queues(page: &mut String, lines: &[Line]) {
    let mut lengths: Vec<(&str, f64)> = lines
        .iter()
        .filter(|l| l.name == QUEUE_LENGTH)
        .filter_map(|l| Some((l.label("queue")?, l.value)))
        .collect();
    if lengths.is_empty() {
        page.push_str("<p>Not sampled in this process (the worker samples its queues).</p>");
        return;
    }
    lengths.sort_by(|a, b| a.0.cmp(b.0));
    page.push_str(
        "<table id=\"queues\"><tr><th>queue</th><th>messages</th><th>oldest visible (s)</th></tr>",
    );
    for (name, length) in lengths {
        let age = lines
            .iter()
            .find(|l| l.name == OLDEST_VISIBLE_AGE && l.label("queue") == Some(name))
            .map_or_else(|| "–".to_owned(), |l| format!("{:.0}", l.value));
        let _ = write!(
            page,
            "<tr class=\"queue\" data-queue=\"{q}\"><td>{q}</td><td class=\"n length\">{length:.0}</td><td class=\"n age\">{age}</td></tr>",
            q = html(name),
        );
    }
    page.push_str("</table>");
}

/// A small bar chart of `values` (one bar per minute, oldest left), as inline SVG.
fn chart(name: &str, values: &[f64]) -> String {
    const WIDTH: f64 = 240.0;
    const HEIGHT: f64 = 60.0;
    let max = values.iter().copied().fold(0.0, f64::max);
    let bar = WIDTH / (KEPT_SAMPLES - 1) as f64;
    let mut svg = format!(
        "<figure><svg id=\"chart-{name}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-label=\"{name} per minute\"><rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#f4f6f8\"/>"
    );
    // The newest minute at the right edge.
    let offset = (KEPT_SAMPLES - 1).saturating_sub(values.len()) as f64 * bar;
    for (i, value) in values.iter().enumerate() {
        if *value <= 0.0 {
            continue;
        }
        let h = (value / max * (HEIGHT - 4.0)).max(1.0);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#3b6fb6\"><title>{value:.0}</title></rect>",
            offset + i as f64 * bar,
            HEIGHT - h,
            (bar - 1.0).max(1.0),
        );
    }
    let _ = write!(
        svg,
        "</svg><figcaption>{name} per minute, newest right (most {max:.0})</figcaption></figure>"
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_prometheus_text_it_renders() {
        let text = "# HELP x y\n\
                    codewatch_messages_total{outcome=\"activated\"} 7\n\
                    codewatch_messages_total{outcome=\"poisoned\"} 2\n\
                    codewatch_http_requests_total{route=\"/api/v1/getcode\",status=\"200\"} 5\n\
                    codewatch_http_requests_total{route=\"/api/v1/codes\",status=\"201\"} 3\n\
                    codewatch_http_requests_total{route=\"/api/v1/codes\",status=\"400\"} 9\n\
                    codewatch_queue_length{queue=\"code-requests\"} 4\n\
                    weird{a=\"x \\\"q\\\" y\",b=\"\"} 1.5\n\
                    codewatch_ready 1\n";
        let lines = parse(text);
        assert_eq!(totals(&lines), [8.0, 7.0, 0.0, 2.0]);
        let weird = lines.iter().find(|l| l.name == "weird").unwrap();
        assert_eq!(weird.label("a"), Some("x \"q\" y"));
        assert_eq!(weird.label("b"), Some(""));
        assert_eq!(weird.value, 1.5);
        assert_eq!(lines.last().unwrap().name, "codewatch_ready");
    }

    #[test]
    fn the_page_escapes_what_it_shows_from_outside() {
        let page = render(&Figures {
            at: Utc::now(),
            parts: vec![("queue", Some("<script>alert(1)</script>".into()))],
            active: Some(Ok(3)),
            totals: [1.0, 2.0, 0.0, 0.0],
            samples: vec![[0.0; 4], [1.0, 2.0, 0.0, 0.0]],
            lines: Vec::new(),
            problems: vec![Problem {
                at: Utc::now(),
                level: tracing::Level::WARN,
                text: "reason=<img src=x onerror=alert(1)>".into(),
            }],
        });
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("id=\"ready\" class=\"bad\">not ready"));
        assert!(page.contains("id=\"active-codes\">3<"));
        assert!(page.contains("id=\"total-activated\">2<"));
        assert!(page.contains(">p50 (ms)<") && page.contains(">p99 (ms)<"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external asset"
        );
    }
}
