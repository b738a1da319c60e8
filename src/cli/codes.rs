//! `codewatch codes list | show | revoke | unlock`: SQL inspection for operators.

use crate::backends::Database;
use crate::config::{CodesArgs, CodesCommand, OutputFormat};
use crate::domain::Code;
use crate::domain::Subject;
use crate::store::CodeRecord;
use crate::timestamp;
use crate::untrusted::{escape_all, is_format_char};
use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

/// Runs a `codes` subcommand.
pub async fn run(args: CodesArgs) -> Result<()> {
    let store = Database::open_existing(&args.database)
        .await
        .context("opening the database")?
        .store();
    let now = Utc::now();
    match args.command {
        CodesCommand::List { all, format, limit } => {
            let records = store.list(all, now, limit).await?;
            say_part!("{}", render(&records, format, now)?)?;
        }
        CodesCommand::Show { code } => {
            let code = Code::parse(&code)?;
            let records = store.records(&code).await?;
            if records.is_empty() {
                bail!("no issuance of {code} is recorded");
            }
            say_part!("{}", render(&records, OutputFormat::Table, now)?)?;
        }
        CodesCommand::Revoke { code } => {
            let code = Code::parse(&code)?;
            let revoked = store.revoke(&code, now).await?;
            say!(
                "{code}: revoked {revoked} valid issuance(s); any issued before now that is still on its way \
                 through the queue is revoked on arrival"
            )?;
        }
        CodesCommand::Unlock { subject } => {
            let subject = Subject::parse(&subject)?;
            store.reset_failures(&subject).await?;
            say!("{subject}: failed checks forgotten")?;
        }
    }
    Ok(())
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(timestamp::format).unwrap_or_default()
}

const HEADER: [&str; 10] = [
    "code",
    "state",
    "subject",
    "issued_at",
    "expires_at",
    "activated_at",
    "redeemed_at",
    "revoked_at",
    "delivery",
    "issuance_id",
];

/// A row's delivery in a few words: where (masked), its state, and why it failed.
fn delivery(r: &CodeRecord) -> String {
    let Some(d) = &r.delivery else {
        return String::new();
    };
    let mut text = format!("{} to {}", d.state(), d.destination.masked());
    match (d.delivered_at, d.failed_at, &d.error) {
        (Some(at), _, _) => text += &format!(" at {}", timestamp::format(at)),
        (None, _, Some(error)) => {
            text += &format!(" after {} attempt(s): {}", d.attempts, escape_all(error))
        }
        _ => {}
    }
    text
}

/// A row's fields as text, each control or format character escaped: a subject stored before such
/// characters were refused (or written by hand) cannot reorder or hide what an operator sees.
fn fields(r: &CodeRecord, now: DateTime<Utc>) -> [String; 10] {
    [
        r.code.to_string(),
        r.state_at(now).to_string(),
        r.subject
            .as_ref()
            .map(|s| escape_all(s.as_str()))
            .unwrap_or_default(),
        timestamp::format(r.issued_at),
        timestamp::format(r.expires_at),
        timestamp::format(r.activated_at),
        time(r.redeemed_at),
        time(r.revoked_at),
        delivery(r),
        r.issuance_id.to_string(),
    ]
}

/// Renders records as an aligned table, a JSON array, or CSV.
fn render(records: &[CodeRecord], format: OutputFormat, now: DateTime<Utc>) -> Result<String> {
    Ok(match format {
        OutputFormat::Json => json_escaped(&serde_json::to_string_pretty(records)?) + "\n",
        OutputFormat::Csv => {
            let mut out = HEADER.join(",") + "\n";
            for r in records {
                out += &fields(r, now)
                    .iter()
                    .map(|f| csv_field(f))
                    .collect::<Vec<_>>()
                    .join(",");
                out.push('\n');
            }
            out
        }
        OutputFormat::Table => {
            let rows: Vec<[String; 10]> = records.iter().map(|r| fields(r, now)).collect();
            let mut widths = HEADER.map(str::len);
            for row in &rows {
                for (w, f) in widths.iter_mut().zip(row) {
                    *w = (*w).max(f.chars().count());
                }
            }
            let line = |cells: &[String]| {
                let padded: Vec<String> = cells
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                padded.join("  ").trim_end().to_owned() + "\n"
            };
            let mut out = line(&HEADER.map(String::from));
            for row in &rows {
                out += &line(row);
            }
            out + &format!("({} rows)\n", rows.len())
        }
    })
}

/// JSON text with every format character written as a `\\uXXXX` escape (serde_json escapes control
/// characters itself): the same JSON value, which no terminal can reorder. Outside strings JSON is ASCII,
/// so every such character is inside a string.
fn json_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_format_char(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A CSV field: quoted when it holds a separator, a quote or a line break; one that a spreadsheet would
/// read as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) is prefixed with
/// `'` and quoted, as OWASP advises against CSV injection.
fn csv_field(field: &str) -> String {
    let formula = field.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula {
        format!("\"'{}\"", field.replace('"', "\"\""))
    } else if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IssuanceId;

    fn record() -> CodeRecord {
        let t = timestamp::parse("2026-11-28 09:10:52.123456").unwrap();
        CodeRecord {
            issuance_id: IssuanceId::from_string("id-1".into()),
            code: Code::parse("ojE-161-pTv").unwrap(),
            subject: Some(Subject::parse("bob, \"the\" user").unwrap()),
            issued_at: t,
            expires_at: t + chrono::Duration::seconds(600),
            activated_at: t,
            redeemed_at: None,
            revoked_at: None,
            expired_at: None,
            delivery: None,
        }
    }

    #[test]
    fn csv_quotes_fields_with_commas_and_quotes() {
        let now = timestamp::parse("2026-11-28 09:11:00").unwrap();
        let csv = render(&[record()], OutputFormat::Csv, now).unwrap();
        let line = csv.lines().nth(1).unwrap();
        assert!(
            line.starts_with(
                "ojE-161-pTv,valid,\"bob, \"\"the\"\" user\",2026-11-28 09:10:52.123456,"
            ),
            "{line}"
        );
    }

    #[test]
    fn table_and_json_carry_the_code_and_state() {
        let later = timestamp::parse("2026-11-28 10:00:00").unwrap();
        let table = render(&[record()], OutputFormat::Table, later).unwrap();
        assert!(table.contains("ojE-161-pTv  expired"), "{table}");
        assert!(table.ends_with("(1 rows)\n"));
        let json: serde_json::Value =
            serde_json::from_str(&render(&[record()], OutputFormat::Json, later).unwrap()).unwrap();
        assert_eq!(json[0]["code"], "ojE-161-pTv");
    }

    /// A record whose subject was stored before format characters were refused.
    fn stored(subject: &str) -> CodeRecord {
        CodeRecord {
            subject: Some(Subject::from_stored(subject.to_owned())),
            ..record()
        }
    }

    #[test]
    fn every_format_escapes_bidirectional_and_invisible_characters() {
        let now = timestamp::parse("2026-11-28 09:11:00").unwrap();
        let spoof = stored("admin\u{202e}txt.exe\u{200b}");
        for format in [OutputFormat::Table, OutputFormat::Csv, OutputFormat::Json] {
            let out = render(std::slice::from_ref(&spoof), format, now).unwrap();
            assert!(!out.chars().any(is_format_char), "{format:?}: {out:?}");
        }
        let table = render(std::slice::from_ref(&spoof), OutputFormat::Table, now).unwrap();
        assert!(table.contains("admin\\u{202e}txt.exe\\u{200b}"), "{table}");
        let json = render(&[spoof], OutputFormat::Json, now).unwrap();
        assert!(json.contains("admin\\u202etxt.exe\\u200b"), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value[0]["subject"], "admin\u{202e}txt.exe\u{200b}",
            "the same value"
        );
    }

    #[test]
    fn csv_neutralises_formulas_as_owasp_advises() {
        let now = timestamp::parse("2026-11-28 09:11:00").unwrap();
        for (subject, shown) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
            ),
            ("+1", "\"'+1\""),
            ("-1", "\"'-1\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
        ] {
            let csv = render(&[stored(subject)], OutputFormat::Csv, now).unwrap();
            let line = csv.lines().nth(1).unwrap();
            assert!(
                line.starts_with(&format!("ojE-161-pTv,valid,{shown},")),
                "{line}"
            );
        }
    }
}
