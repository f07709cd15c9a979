//! The ANB logo, drawn here and written as a PNG at start-up: nothing is downloaded, and
//! the asset cannot go missing from a deployment.

use std::path::Path;

/// Letters on a 5×7 grid, one string per row.
const GLYPHS: [[&str; 7]; 3] = [
    [
        ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
    ], // A
    [
        "#...#", "##..#", "##..#", "#.#.#", "#..##", "#..##", "#...#",
    ], // N
    [
        "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
    ], // B
];

const WIDTH: u32 = 300;
const HEIGHT: u32 = 100;
const ORANGE: [u8; 4] = [0xF2, 0x6B, 0x1D, 0xFF];
const SEAM: [u8; 4] = [0x2B, 0x16, 0x0A, 0xFF];
const WHITE: [u8; 4] = [0xFF, 0xFF, 0xFF, 0xFF];

/// RGBA pixels of the logo: a basketball followed by "ANB", on a transparent background.
pub fn pixels() -> Vec<u8> {
    let mut canvas = vec![0u8; (WIDTH * HEIGHT * 4) as usize];
    let mut put = |x: u32, y: u32, color: [u8; 4]| {
        if x < WIDTH && y < HEIGHT {
            let i = ((y * WIDTH + x) * 4) as usize;
            canvas[i..i + 4].copy_from_slice(&color);
        }
    };
    let (cx, cy, r) = (50i64, 50i64, 44i64);
    for y in 0..HEIGHT {
        for x in 0..100 {
            let (dx, dy) = (i64::from(x) - cx, i64::from(y) - cy);
            let d2 = dx * dx + dy * dy;
            if d2 <= r * r {
                let seam = dx.abs() <= 2 || dy.abs() <= 2 || (d2 - (r * r) / 3).abs() < 70;
                put(x, y, if seam { SEAM } else { ORANGE });
            }
        }
    }
    let scale = 12u32;
    for (n, glyph) in GLYPHS.iter().enumerate() {
        let left = 110 + n as u32 * (6 * scale - 8);
        for (row, line) in glyph.iter().enumerate() {
            for (col, cell) in line.bytes().enumerate() {
                if cell != b'#' {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..(scale - 2) {
                        put(
                            left + col as u32 * (scale - 2) + dx,
                            8 + row as u32 * scale + dy,
                            WHITE,
                        );
                    }
                }
            }
        }
    }
    canvas
}

/// Writes the logo to `path` as a PNG.
pub fn write_png(path: &Path) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels())?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logo_has_a_ball_letters_and_transparency() {
        let pixels = pixels();
        let count = |color: [u8; 4]| pixels.chunks(4).filter(|p| *p == color).count();
        assert!(count(ORANGE) > 3000, "ball too small");
        assert!(count(WHITE) > 3000, "letters missing");
        assert!(
            pixels.chunks(4).filter(|p| p[3] == 0).count() > 10_000,
            "no transparent background"
        );
    }
}
