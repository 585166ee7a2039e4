//! The sweep's figure: speedup (measured and ideal) on the left axis and perplexity (log scale)
//! on the right, against the sparsity ratio. SVG or PNG by the file's extension.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;

use crate::measure::sweep::Sweep;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
        {
            Some(e) if e == "svg" => Ok(Format::Svg),
            Some(e) if e == "png" => Ok(Format::Png),
            _ => bail!(
                "--plot {}: the file name must end in .svg or .png",
                path.display()
            ),
        }
    }
}

/// Fonts tried for the figure's text (plotters lays text out with a real font even for SVG),
/// after `$QSPARSE_FONT`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

const FAMILY: &str = "sans-serif";

/// Find and register a TrueType font for the figure's text, once.
pub fn load_font() -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates = std::env::var("QSPARSE_FONT")
                .ok()
                .into_iter()
                .chain(FONT_PATHS.iter().map(|p| p.to_string()));
            for path in candidates {
                if let Ok(bytes) = std::fs::read(&path) {
                    // Registered fonts live as long as the program.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                        return Ok(());
                    }
                }
            }
            Err(
                "no TrueType font found for the plot's text: set QSPARSE_FONT to a .ttf file \
                 (on Debian/Ubuntu: apt install fonts-dejavu-core)"
                    .to_owned(),
            )
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Draw `sweep` into `path`.
pub fn draw(path: &Path, format: Format, title: &str, sweep: &Sweep) -> Result<()> {
    load_font()?;
    if methods(sweep).len() > 1 {
        return draw_methods(path, format, title, sweep);
    }
    let size = (960, 600);
    match format {
        Format::Svg => figure(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            sweep,
        ),
        Format::Png => figure(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            sweep,
        ),
    }
}

fn figure<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    sweep: &Sweep,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let rows = &sweep.rows;
    let s_max = rows.iter().map(|r| r.sparsity as f64).fold(0.5, f64::max);
    let y_max = rows
        .iter()
        .flat_map(|r| [r.speedup, r.ideal_speedup])
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.1;
    let ppl: Vec<f64> = rows
        .iter()
        .map(|r| r.ppl)
        .filter(|v| v.is_finite())
        .collect();
    let ppl_lo = ppl.iter().copied().fold(f64::INFINITY, f64::min).max(1.0) / 1.2;
    let ppl_hi = ppl.iter().copied().fold(1.0, f64::max) * 1.2;

    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Q-Sparse sweep: {title}"), (FAMILY, 24).into_font())
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0.0..s_max * 1.02, 0.0..y_max)
        .map_err(err)?
        .set_secondary_coord(
            0.0..s_max * 1.02,
            (ppl_lo..ppl_hi)
                .log_scale()
                .with_key_points(log_ticks(ppl_lo, ppl_hi)),
        );
    chart
        .configure_mesh()
        .x_desc("sparsity S (fraction of each projection's inputs dropped)")
        .y_desc("decode speedup over dense (x)")
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("perplexity (log scale)")
        .y_label_formatter(&|v| {
            if *v < 10.0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            }
        })
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(err)?;

    let ideal = RGBColor(120, 120, 120);
    let measured = RGBColor(31, 119, 180);
    let quality = RGBColor(214, 39, 40);
    let points = |f: &dyn Fn(&crate::measure::sweep::Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.sparsity as f64, f(r))).collect()
    };
    let ideal_pts = points(&|r| r.ideal_speedup);
    let speed_pts = points(&|r| r.speedup);
    let ppl_pts = points(&|r| r.ppl);

    chart
        .draw_series(LineSeries::new(ideal_pts.clone(), ideal.stroke_width(2)))
        .map_err(err)?
        .label("ideal speedup (dense bytes / bytes read)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], ideal.stroke_width(2)));
    chart
        .draw_series(ideal_pts.iter().map(|&p| Circle::new(p, 3, ideal.filled())))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(speed_pts.clone(), measured.stroke_width(3)))
        .map_err(err)?
        .label("measured decode speedup")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], measured.stroke_width(3)));
    chart
        .draw_series(
            speed_pts
                .iter()
                .map(|&p| Circle::new(p, 4, measured.filled())),
        )
        .map_err(err)?;
    chart
        .draw_secondary_series(LineSeries::new(ppl_pts.clone(), quality.stroke_width(3)))
        .map_err(err)?
        .label("perplexity (right axis)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], quality.stroke_width(3)));
    chart
        .draw_secondary_series(
            ppl_pts
                .iter()
                .map(|&p| TriangleMarker::new(p, 5, quality.filled())),
        )
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One named line of [`draw_curves`].
pub struct Curve {
    /// The legend's text.
    pub name: String,
    /// The points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// Line charts of `curves` into `path`: x linear, y on a log scale when `log_y`, one colour a
/// curve, the legend upper right.
pub fn draw_curves(
    path: &Path,
    format: Format,
    title: &str,
    axes: (&str, &str),
    curves: &[Curve],
    log_y: bool,
) -> Result<()> {
    load_font()?;
    let size = (960, 600);
    match format {
        Format::Svg => curve_figure(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            axes,
            curves,
            log_y,
        ),
        Format::Png => curve_figure(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            axes,
            curves,
            log_y,
        ),
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(120, 120, 120),
];

fn curve_figure<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    axes: (&str, &str),
    curves: &[Curve],
    log_y: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    curve_panel(
        &root,
        title,
        axes,
        curves,
        log_y,
        SeriesLabelPosition::UpperRight,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// The chart of [`curve_figure`] on `area` (no background, not presented).
fn curve_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    curves: &[Curve],
    log_y: bool,
    legend: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    let all = || {
        curves
            .iter()
            .flat_map(|c| c.points.iter())
            .filter(|p| p.1.is_finite())
    };
    let x_hi = all().map(|p| p.0).fold(0.0, f64::max).max(1e-9) * 1.02;
    let y_lo = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_hi = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if !y_lo.is_finite() || !y_hi.is_finite() {
        return Err(anyhow!("nothing to draw"));
    }
    let (y_lo, y_hi) = if log_y {
        (y_lo.max(1e-9) / 1.1, y_hi * 1.1)
    } else {
        let pad = (y_hi - y_lo).max(1e-9) * 0.05;
        (y_lo - pad, y_hi + pad)
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FAMILY, 22).into_font())
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .y_label_formatter(&|v| tick_label(*v))
                .label_style((FAMILY, 15))
                .axis_desc_style((FAMILY, 16))
                .draw()
                .map_err(err)?;
            for (i, c) in curves.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(c.points.clone(), color.stroke_width(3)))
                    .map_err(err)?
                    .label(c.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3))
                    });
                chart
                    .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(legend.clone())
                .label_font((FAMILY, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }};
    }
    if log_y {
        finish!(builder
            .build_cartesian_2d(
                0.0..x_hi,
                (y_lo..y_hi)
                    .log_scale()
                    .with_key_points(log_ticks(y_lo, y_hi)),
            )
            .map_err(err)?);
    } else {
        finish!(builder
            .build_cartesian_2d(0.0..x_hi, y_lo..y_hi)
            .map_err(err)?);
    }
    Ok(())
}

/// The methods of a sweep's rows other than the dense reference, in order of appearance.
fn methods(sweep: &Sweep) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in sweep.rows.iter().filter(|r| r.method != "dense") {
        if !out.contains(&r.method) {
            out.push(r.method);
        }
    }
    out
}

/// A sweep of several methods: decode speedup (with the ideal) above, perplexity below, one
/// curve a method, each starting from the dense row.
fn draw_methods(path: &Path, format: Format, title: &str, sweep: &Sweep) -> Result<()> {
    let dense = sweep.rows.iter().find(|r| r.method == "dense");
    let curve = |method: &str, f: &dyn Fn(&crate::measure::sweep::Row) -> f64| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = dense
            .into_iter()
            .chain(sweep.rows.iter().filter(|r| r.method == method))
            .map(|r| (r.sparsity as f64, f(r)))
            .filter(|p| p.1.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let names = methods(sweep);
    let mut speed: Vec<Curve> = names
        .iter()
        .map(|m| Curve {
            name: format!("{m}: measured decode speedup"),
            points: curve(m, &|r| r.speedup),
        })
        .collect();
    speed.push(Curve {
        name: "ideal (dense bytes / bytes read)".to_string(),
        points: curve(names[0], &|r| r.ideal_speedup),
    });
    let quality: Vec<Curve> = names
        .iter()
        .map(|m| Curve {
            name: format!("{m}: perplexity"),
            points: curve(m, &|r| r.ppl),
        })
        .collect();
    let x = "sparsity S (the bytes of uniform S; fraction of inputs dropped)";
    let size = (960, 900);
    macro_rules! two_panels {
        ($backend:expr) => {{
            let root = $backend.into_drawing_area();
            let err = |e: DrawingAreaErrorKind<_>| anyhow!("{e:?}");
            root.fill(&WHITE).map_err(err)?;
            let (top, bottom) = root.split_vertically(size.1 / 2);
            curve_panel(
                &top,
                &format!("Q-Sparse sweep: {title}: decode speedup"),
                (x, "decode speedup over dense (x)"),
                &speed,
                false,
                SeriesLabelPosition::UpperLeft,
            )?;
            curve_panel(
                &bottom,
                "perplexity (log scale)",
                (x, "perplexity"),
                &quality,
                true,
                SeriesLabelPosition::UpperLeft,
            )?;
            root.present().map_err(err)?;
        }};
    }
    match format {
        Format::Svg => two_panels!(SVGBackend::new(path, size)),
        Format::Png => two_panels!(BitMapBackend::new(path, size)),
    }
    Ok(())
}

/// A tick's text: whole numbers from 10 up, else as few digits as say it.
fn tick_label(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// Ticks for a log axis over lo..hi that a reader can use at any range: 1, 2, 5 times the powers
/// of ten inside it, or every 1..9 times them when that gives fewer than three.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (first..=last)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let coarse = ticks(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        coarse
    } else {
        ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

#[cfg(test)]
mod tests {
    use super::log_ticks;

    #[test]
    fn a_log_axis_under_a_decade_still_has_ticks() {
        assert_eq!(log_ticks(6.5, 14.5), [7.0, 8.0, 9.0, 10.0]);
        assert_eq!(
            log_ticks(10.0, 1000.0),
            [10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
    }
}
