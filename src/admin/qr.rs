//! QR codes of tenant deep links, as SVG (from `qrcode`) and PNG (the module
//! grid scaled up and encoded with `png`, so no image-processing crate is needed).

use qrcode::{Color, EcLevel, QrCode};

/// Pixels per module in the PNG.
const SCALE: usize = 8;
/// Light modules around the code; scanners need at least 4.
const QUIET: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("cannot encode as a QR code: {0}")]
    Encode(#[from] qrcode::types::QrError),
    #[error("cannot write PNG: {0}")]
    Png(#[from] png::EncodingError),
}

fn code(text: &str) -> Result<QrCode, QrError> {
    // Level M survives a little damage and keeps a wa.me link at version 3-4.
    Ok(QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)?)
}

/// An SVG document of the QR code of `text`.
pub fn svg(text: &str) -> Result<String, QrError> {
    Ok(code(text)?.render::<qrcode::render::svg::Color>().min_dimensions(256, 256).build())
}

/// A grayscale PNG of the QR code of `text`.
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = code(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
        for y in my * SCALE..(my + 1) * SCALE {
            pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
    }
    Ok(out)
}
