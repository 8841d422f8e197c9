//! The chart of `cpulocal bench`: aggregate throughput against threads, one
//! line per peer, as PNG and SVG (plotters).
//!
//! Text in the PNG is drawn by plotters' `ab_glyph` renderer from DejaVu Sans,
//! embedded in the binary (the `dejavu` crate), so neither building nor
//! running needs fontconfig, FreeType or a system font. The SVG names the
//! family "sans-serif" and leaves the glyphs to the viewer.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use cpulocal_cli::suite::Report;
use cpulocal_cli::Peer;

/// The chart files' name, without extension.
pub const STEM: &str = "counter-throughput";

/// Size of the PNG, pixels (the SVG has the same user units).
const SIZE: (u32, u32) = (1200, 700);

/// Width of the legend column on the right.
const LEGEND_WIDTH: u32 = 330;

/// The files one chart was written to.
#[derive(Debug, Clone)]
pub struct Files {
    /// The PNG.
    pub png: PathBuf,
    /// The SVG.
    pub svg: PathBuf,
}

/// Makes the embedded font plotters' "sans-serif".
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font, so registration cannot fail;
        // if it did, drawing text would report the error.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Writes `STEM.png` and `STEM.svg` into `dir`, created if missing.
///
/// # Errors
///
/// A message naming the file that could not be created or drawn.
pub fn write(report: &Report, dir: &Path) -> Result<Files, String> {
    register_fonts();
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the chart directory {}: {e}", dir.display()))?;
    let files = Files {
        png: dir.join(format!("{STEM}.png")),
        svg: dir.join(format!("{STEM}.svg")),
    };
    {
        let root = BitMapBackend::new(&files.png, SIZE).into_drawing_area();
        draw(&root, report)
            .and_then(|()| root.present())
            .map_err(|e| format!("cannot draw {}: {e}", files.png.display()))?;
    }
    {
        let root = SVGBackend::new(&files.svg, SIZE).into_drawing_area();
        draw(&root, report)
            .and_then(|()| root.present())
            .map_err(|e| format!("cannot draw {}: {e}", files.svg.display()))?;
    }
    Ok(files)
}

/// A peer's line colour (Tableau-like, distinct on white); cpulocal in red.
fn colour(peer: Peer) -> RGBColor {
    match peer {
        Peer::Cpulocal => RGBColor(214, 39, 40),
        Peer::CRseq => RGBColor(60, 60, 60),
        Peer::CRseqFenceCheck => RGBColor(150, 150, 150),
        Peer::SharedAtomic => RGBColor(31, 119, 180),
        Peer::GetcpuAtomic => RGBColor(255, 127, 14),
        Peer::ThreadLocalFetchAdd => RGBColor(44, 160, 44),
        Peer::ThreadLocalLoadStore => RGBColor(23, 190, 207),
        Peer::FastCounter => RGBColor(148, 103, 189),
    }
}

/// The C peers are baselines, not counters a Rust user would pick: dashed.
fn dashed(peer: Peer) -> bool {
    matches!(peer, Peer::CRseq | Peer::CRseqFenceCheck)
}

/// cpulocal's line is thicker.
fn width(peer: Peer) -> u32 {
    if peer == Peer::Cpulocal {
        4
    } else {
        2
    }
}

/// The x coordinate of a thread count: log2, so 1, 2, 4, 8, 16 are evenly
/// spaced.
fn x_of(threads: usize) -> f64 {
    (threads as f64).log2()
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (plot, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);

    let threads = &report.config.threads;
    let x_min = x_of(*threads.first().unwrap_or(&1));
    let x_max = x_of(*threads.last().unwrap_or(&1)).max(x_min + 1.0);
    let mops: Vec<f64> = report
        .cells
        .iter()
        .map(|c| c.mops())
        .filter(|m| m.is_finite() && *m > 0.0)
        .collect();
    let y_min = mops.iter().copied().fold(f64::INFINITY, f64::min);
    let y_max = mops.iter().copied().fold(0.0, f64::max);
    // From a power of ten, where the log axis puts its first label.
    let (y_min, y_max) = if y_min.is_finite() && y_max > 0.0 {
        (10f64.powf((y_min / 1.3).log10().floor()), y_max * 1.6)
    } else {
        (1.0, 1000.0)
    };

    let caption = format!(
        "Counter throughput vs threads ({} CPU{}, threads {}, {} rounds of {} ms)",
        report.cpus,
        if report.cpus == 1 { "" } else { "s" },
        report.config.placement,
        report.config.rounds,
        report.config.batch.as_millis(),
    );
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((x_min - 0.2)..(x_max + 0.2), (y_min..y_max).log_scale())?;
    let label_threads = |x: &f64| {
        let k = x.round();
        if (x - k).abs() < 1e-6 && k >= 0.0 {
            format!("{}", 2f64.powf(k) as u64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc("threads (log scale)")
        .y_desc("million operations / s, all threads (log scale)")
        .x_labels(((x_max - x_min) as usize + 1) * 2)
        .x_label_formatter(&label_threads)
        .y_labels(40)
        .y_label_formatter(&|y| {
            // Label 1, 2 and 5 times a power of ten; the others are lines.
            let lead = y / 10f64.powf(y.log10().floor());
            if [1.0, 2.0, 5.0].iter().any(|l| (lead - l).abs() < 1e-6) {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y}")
                }
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    // The number of CPUs: to its right, threads share CPUs.
    let cpus_x = x_of(report.cpus);
    if cpus_x > x_min - 0.2 && cpus_x < x_max + 0.2 {
        let grey = RGBColor(120, 120, 120);
        chart.draw_series(DashedLineSeries::new(
            [(cpus_x, y_min), (cpus_x, y_max)],
            6,
            4,
            grey.stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{} CPUs: more threads share them", report.cpus),
            (cpus_x + 0.04, y_max / 1.25),
            ("sans-serif", 15).into_font().color(&grey),
        )))?;
    }

    let peers: Vec<Peer> = report
        .config
        .peers
        .iter()
        .copied()
        .filter(|p| report.cells.iter().any(|c| c.peer == *p))
        .collect();
    // cpulocal last, on top of the lines close to it.
    let mut order = peers.clone();
    order.sort_by_key(|&p| p == Peer::Cpulocal);
    for &peer in &order {
        let (colour, width) = (colour(peer), width(peer));
        let points: Vec<(f64, f64)> = report
            .cells
            .iter()
            .filter(|c| c.peer == peer && c.mops().is_finite())
            .map(|c| (x_of(c.threads), c.mops()))
            .collect();
        if dashed(peer) {
            chart.draw_series(DashedLineSeries::new(
                points.iter().copied(),
                8,
                5,
                colour.stroke_width(width),
            ))?;
        } else {
            chart.draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(width),
            ))?;
        }
        chart.draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, width + 2, colour.filled())),
        )?;
    }

    // The legend, in its own column, in report order.
    let top = 70;
    let row = 30;
    legend.draw(&Text::new(
        "peers (each adds 1 per operation)",
        (10, top - 30),
        ("sans-serif", 16).into_font(),
    ))?;
    for (i, &peer) in peers.iter().enumerate() {
        let y = top + row * i as i32;
        let (colour, width) = (colour(peer), width(peer));
        let style = colour.stroke_width(width);
        if dashed(peer) {
            for x in [10, 38] {
                legend.draw(&PathElement::new(vec![(x, y), (x + 12, y)], style))?;
            }
        } else {
            legend.draw(&PathElement::new(vec![(10, y), (50, y)], style))?;
        }
        legend.draw(&Circle::new((30, y), width + 2, colour.filled()))?;
        legend.draw(&Text::new(
            peer.label(),
            (60, y - 9),
            ("sans-serif", 16).into_font(),
        ))?;
    }
    let note_y = top + row * peers.len() as i32 + 20;
    for (k, line) in [
        "throughput = all threads' operations",
        "/ wall time of the batch; median of",
        "interleaved rounds in one process",
    ]
    .iter()
    .enumerate()
    {
        legend.draw(&Text::new(
            *line,
            (10, note_y + 20 * k as i32),
            ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        ))?;
    }
    Ok(())
}
