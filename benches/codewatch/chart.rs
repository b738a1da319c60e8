//! The benchmark's chart: for every path with a baseline, its throughput and its CPU per unit as a
//! multiple of the baseline's (1.0 = the baseline), as an SVG with no dependencies.

use crate::Row;

const WIDTH: f64 = 980.0;
const LABEL: f64 = 430.0;
const ROW: f64 = 34.0;
/// The scale's right end, as a multiple of the baseline.
const MAX_RATIO: f64 = 3.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG of every row compared with a baseline: a blue bar for throughput, an orange one for CPU
/// per unit, both as multiples of the baseline's, with the baseline's line at 1.0.
pub fn svg(rows: &[Row], machine: &str) -> String {
    let compared: Vec<&Row> = rows.iter().filter(|r| r.rate_ratio.is_some()).collect();
    let height = 70.0 + ROW * compared.len() as f64 + 30.0;
    let x = |ratio: f64| LABEL + (ratio.min(MAX_RATIO) / MAX_RATIO) * (WIDTH - LABEL - 20.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">codewatch against its baselines, same run \
         (1.0 = the baseline)</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">{}</text>\n\
         <rect x=\"{LABEL}\" y=\"46\" width=\"12\" height=\"10\" fill=\"#3b7dd8\"/>\
         <text x=\"{}\" y=\"55\">throughput × baseline</text>\n\
         <rect x=\"{}\" y=\"46\" width=\"12\" height=\"10\" fill=\"#e8833a\"/>\
         <text x=\"{}\" y=\"55\">CPU per unit × baseline</text>\n",
        escape(machine),
        LABEL + 16.0,
        LABEL + 180.0,
        LABEL + 196.0,
    );
    for (i, row) in compared.iter().enumerate() {
        let y = 70.0 + ROW * i as f64;
        out += &format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n",
            y + 16.0,
            escape(&format!("{}: {}", row.part, row.case))
        );
        for (j, (ratio, colour)) in [(row.rate_ratio, "#3b7dd8"), (row.cpu_ratio, "#e8833a")]
            .into_iter()
            .enumerate()
        {
            if let Some(ratio) = ratio {
                let top = y + 3.0 + 13.0 * j as f64;
                out += &format!(
                    "<rect x=\"{LABEL}\" y=\"{top}\" width=\"{:.1}\" height=\"11\" fill=\"{colour}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{ratio:.2}</text>\n",
                    x(ratio) - LABEL,
                    x(ratio) + 4.0,
                    top + 9.5
                );
            }
        }
    }
    let bottom = 70.0 + ROW * compared.len() as f64;
    for tick in [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0] {
        let colour = if tick == 1.0 { "#000" } else { "#ccc" };
        out += &format!(
            "<line x1=\"{0:.1}\" y1=\"64\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"{colour}\"/>\
             <text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\" fill=\"#555\">{tick:.1}</text>\n",
            x(tick),
            bottom + 16.0
        );
    }
    out + "</svg>\n"
}
