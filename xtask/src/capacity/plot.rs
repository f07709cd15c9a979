//! PNG line charts for the capacity reports (plotters, bitmap backend). Text is drawn with
//! DejaVu Sans from the system (Debian's fonts-dejavu-core, installed if missing), loaded
//! once.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
];
const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let read = || FONT_FILES.iter().find_map(|path| std::fs::read(path).ok());
            let bytes = match read() {
                Some(bytes) => bytes,
                None => {
                    crate::system::install_packages(&["fonts-dejavu-core"])
                        .map_err(|e| format!("the plots need the DejaVu Sans font: {e:#}"))?;
                    read().ok_or("fonts-dejavu-core installed no DejaVuSans.ttf")?
                }
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "cannot read the DejaVu Sans font".to_owned())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A line chart of named `(x, y)` series, written to `path` (PNG, 1000×560).
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    register_font()?;
    let points = || series.iter().flat_map(|(_, s)| s.iter());
    let x_max = points().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let x_min = points()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .min(x_max);
    let x_min = if x_min.is_finite() { x_min } else { 0.0 };
    let y_max = points().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (name, data)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw {}", path.display()))
}
