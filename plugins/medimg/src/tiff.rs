//! Single-channel TIFF images (e.g. stardist's `img2d.tif` and its instance
//! mask `mask2d.tif`) through the `tiff` crate.

use crate::image2d::Image2D;
use std::io::Cursor;
use tiff::decoder::{Decoder, DecodingResult};

/// Reads the first page of a grey (one sample per pixel) TIFF as floats;
/// integer values up to 2^24 (all of u16) are exact. `name` labels errors.
pub fn read_gray(name: &str, bytes: &[u8]) -> Result<Image2D, String> {
    let err = |e: tiff::TiffError| format!("{name}: cannot read TIFF ({e})");
    let mut dec = Decoder::new(Cursor::new(bytes)).map_err(err)?;
    let (w, h) = dec.dimensions().map_err(err)?;
    let colour = dec.colortype().map_err(err)?;
    let data: Vec<f32> = match dec.read_image().map_err(err)? {
        DecodingResult::U8(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::U16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::U32(v) => v.into_iter().map(|x| x as f32).collect(),
        DecodingResult::I8(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::I16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::I32(v) => v.into_iter().map(|x| x as f32).collect(),
        DecodingResult::F32(v) => v,
        DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        _ => return Err(format!("{name}: unsupported TIFF sample type ({colour:?})")),
    };
    let (h, w) = (h as usize, w as usize);
    if data.len() != h * w {
        return Err(format!(
            "{name}: TIFF is {colour:?}, only single-channel images are read ({} values for {w}x{h})",
            data.len()
        ));
    }
    Ok(Image2D::new(h, w, data))
}
