//! Plots of a sweep: one panel per metric and axis (rows: metrics, columns:
//! axes), the metric against the axis's values with one line per combination
//! of the other axes. Rows that are no instance (a base model's eval) are
//! drawn as grey horizontal lines for reference.
//!
//! Text is laid out with DejaVu Sans compiled into the binary, so the same
//! table gives the same SVG and PNG bytes on every machine.

use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::SweepTable;
use crate::syntax::json_text;

const PANEL: (u32, u32) = (480, 320);
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid: registration cannot fail.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// The picture's size in pixels for `table`.
fn size(table: &SweepTable) -> (u32, u32) {
    let cols = table.axes.len().max(1) as u32;
    let rows = table.metrics.len().max(1) as u32;
    (PANEL.0 * cols, PANEL.1 * rows)
}

/// The plot as an SVG document.
pub fn svg(table: &SweepTable) -> Result<String> {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size(table)).into_drawing_area();
        draw(&root, table)?;
        root.present()
            .map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
    }
    Ok(out)
}

/// The plot as a PNG image (8-bit RGB).
pub fn png(table: &SweepTable) -> Result<Vec<u8>> {
    register_font();
    let (w, h) = size(table);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw(&root, table)?;
        root.present()
            .map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&pixels)?;
    Ok(out)
}

/// One line of a panel: its legend and points in x order.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

/// The x position of each of `axis`'s values: the number itself when all are
/// numbers, their index in order of appearance otherwise (then also labels).
fn positions(table: &SweepTable, axis: &str) -> (Vec<serde_json::Value>, bool) {
    let mut values: Vec<serde_json::Value> = Vec::new();
    for row in &table.rows {
        if let Some((_, v)) = row.values.iter().find(|(a, _)| a == axis) {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    let numeric = values.iter().all(|v| v.is_number());
    (values, numeric)
}

fn lines(table: &SweepTable, metric: &str, axis: &str) -> (Vec<Line>, Vec<(String, f64)>) {
    let (values, numeric) = positions(table, axis);
    let mut lines: Vec<Line> = Vec::new();
    let mut baselines = Vec::new();
    for row in &table.rows {
        let Some(&y) = row.metrics.get(metric) else {
            continue;
        };
        let Some((_, v)) = row.values.iter().find(|(a, _)| a == axis) else {
            if row.values.is_empty() {
                baselines.push((row.label.clone(), y));
            }
            continue;
        };
        let x = if numeric {
            v.as_f64().unwrap_or(0.0)
        } else {
            values.iter().position(|w| w == v).unwrap_or(0) as f64
        };
        let others: Vec<String> = row
            .values
            .iter()
            .filter(|(a, _)| a != axis)
            .map(|(a, v)| format!("{a}={}", json_text(v)))
            .collect();
        let label = if others.is_empty() {
            metric.to_owned()
        } else {
            others.join(", ")
        };
        match lines.iter_mut().find(|l| l.label == label) {
            Some(l) => l.points.push((x, y)),
            None => lines.push(Line {
                label,
                points: vec![(x, y)],
            }),
        }
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    (lines, baselines)
}

/// `lo..hi` widened by 8% (or by one unit when it is a single value).
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = if hi > lo { (hi - lo) * 0.08 } else { 0.5 };
    lo - pad..hi + pad
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, table: &SweepTable) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let cols = table.axes.len().max(1);
    let panels = root.split_evenly((table.metrics.len().max(1), cols));
    for (i, metric) in table.metrics.iter().enumerate() {
        for (j, axis) in table.axes.iter().enumerate() {
            panel(&panels[i * cols + j], table, metric, axis)?;
        }
    }
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    table: &SweepTable,
    metric: &str,
    axis: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (lines, baselines) = lines(table, metric, axis);
    let (values, numeric) = positions(table, axis);
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let ys = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(baselines.iter().map(|b| b.1));
    let (xlo, xhi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (ylo, yhi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !xlo.is_finite() || !ylo.is_finite() {
        return Ok(());
    }
    let label_x = |x: &f64| -> String {
        if numeric {
            let text = format!("{x:.4}");
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            let i = x.round();
            if (x - i).abs() < 1e-9 && i >= 0.0 {
                values.get(i as usize).map(json_text).unwrap_or_default()
            } else {
                String::new()
            }
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{metric} vs {axis}"), (FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(padded(xlo, xhi), padded(ylo, yhi))?;
    chart
        .configure_mesh()
        .x_desc(axis)
        .y_desc(metric)
        .x_labels(if numeric {
            6
        } else {
            values.len().max(2) * 2 + 1
        })
        .x_label_formatter(&label_x)
        .label_style((FONT, 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let xrange = padded(xlo, xhi);
    for (label, y) in &baselines {
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(LineSeries::new(
                [(xrange.start, *y), (xrange.end, *y)],
                grey.stroke_width(1),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], grey));
    }
    for (k, line) in lines.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(
            line.points
                .iter()
                .map(|p| Circle::new(*p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::Row;
    use serde_json::json;

    fn table() -> SweepTable {
        let row = |d: f64, w: &str, ppl: f64| Row {
            label: format!("d={d:?},w={w}"),
            values: vec![("d".into(), json!(d)), ("w".into(), json!(w))],
            evals: vec![],
            metrics: [("ppl.wiki".to_owned(), ppl)].into_iter().collect(),
        };
        SweepTable {
            axes: vec!["d".into(), "w".into()],
            metrics: vec!["ppl.wiki".into()],
            rows: vec![
                Row {
                    label: "base".into(),
                    values: vec![],
                    evals: vec![],
                    metrics: [("ppl.wiki".to_owned(), 9.0)].into_iter().collect(),
                },
                row(0.5, "a", 7.0),
                row(0.75, "a", 6.5),
                row(0.5, "b", 8.0),
                row(0.75, "b", 7.5),
            ],
        }
    }

    #[test]
    fn svg_has_a_panel_per_axis_with_labels_and_is_deterministic() {
        let t = table();
        let s = svg(&t).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..80]);
        assert!(s.contains("ppl.wiki vs d") && s.contains("ppl.wiki vs w"));
        for label in ["w=a", "d=0.75", "base"] {
            assert!(s.contains(label), "{label} missing from {s}");
        }
        assert_eq!(s, svg(&t).unwrap());
    }

    #[test]
    fn png_is_a_deterministic_image_of_the_layout_size() {
        let t = table();
        let bytes = png(&t).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (960, 320));
        assert_eq!(bytes, png(&t).unwrap());
    }
}
