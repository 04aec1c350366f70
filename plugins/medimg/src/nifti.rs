//! NIfTI-1 single-file volumes (`.nii`, `.nii.gz`): the fixed 348-byte header,
//! either byte order, the common datatypes, `scl_slope`/`scl_inter`, and the
//! voxel-to-RAS affine (sform, else qform, else pixdim scaling).

use crate::volume::Volume;
use std::io::Read;

const HEADER_SIZE: usize = 348;

/// Voxel types this reader understands (NIfTI `datatype` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl DataType {
    fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            2 => Self::U8,
            256 => Self::I8,
            4 => Self::I16,
            512 => Self::U16,
            8 => Self::I32,
            768 => Self::U32,
            16 => Self::F32,
            64 => Self::F64,
            _ => return None,
        })
    }

    fn bytes(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }
}

/// The header fields a decoder needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub little_endian: bool,
    /// Size along x, y, z (missing dims are 1).
    pub dims: [usize; 3],
    /// Voxel size in mm along x, y, z.
    pub pixdim: [f32; 3],
    pub datatype: DataType,
    pub vox_offset: usize,
    pub scl_slope: f32,
    pub scl_inter: f32,
    /// Rows of the 3x4 voxel-to-RAS-mm matrix.
    pub affine: [[f64; 4]; 3],
}

/// Reads a `.nii` or `.nii.gz` (detected by the gzip magic) into a float
/// volume. `name` only labels errors: every message names the file.
pub fn read(name: &str, bytes: &[u8]) -> Result<Volume, String> {
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        raw = gunzip(name, bytes)?;
        raw.as_slice()
    } else {
        bytes
    };
    let header = parse_header(name, bytes)?;
    let data = voxels(name, &header, bytes)?;
    Ok(Volume {
        dims: header.dims,
        pixdim: header.pixdim,
        affine: header.affine,
        data,
    })
}

fn gunzip(name: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("{name}: gzip stream is corrupt or truncated ({e})"))?;
    Ok(out)
}

/// Little helper reading fixed-offset fields in the header's byte order.
struct Fields<'a> {
    b: &'a [u8],
    le: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a: [u8; N] = self.b[at..at + N].try_into().expect("in header");
        if !self.le {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.arr(at))
    }
    fn f32(&self, at: usize) -> f32 {
        f32::from_le_bytes(self.arr(at))
    }
}

/// Parses and checks the 348-byte header.
pub fn parse_header(name: &str, bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < HEADER_SIZE {
        return Err(format!(
            "{name}: {} bytes is shorter than a NIfTI-1 header ({HEADER_SIZE} bytes)",
            bytes.len()
        ));
    }
    let size_le = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let size_be = i32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let le = match (size_le, size_be) {
        (348, _) => true,
        (_, 348) => false,
        _ => {
            return Err(format!(
                "{name}: not a NIfTI-1 file (sizeof_hdr is {size_le}, expected 348)"
            ));
        }
    };
    let f = Fields { b: bytes, le };
    match &bytes[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(format!(
                "{name}: a two-file NIfTI (.hdr/.img) header; only single .nii files are read"
            ));
        }
        m => {
            return Err(format!(
                "{name}: bad NIfTI-1 magic {m:?} (expected \"n+1\")"
            ));
        }
    }

    let ndim = f.i16(40);
    if !(1..=7).contains(&ndim) {
        return Err(format!("{name}: dim[0] = {ndim} is not between 1 and 7"));
    }
    let mut dims = [1usize; 3];
    for (i, d) in (1..=ndim as usize).map(|i| (i, f.i16(40 + 2 * i))) {
        if d < 1 {
            return Err(format!("{name}: dim[{i}] = {d} is not positive"));
        }
        if i <= 3 {
            dims[i - 1] = d as usize;
        } else if d != 1 {
            return Err(format!(
                "{name}: dim[{i}] = {d}: only 3D volumes (or a single time point) are read"
            ));
        }
    }

    let code = f.i16(70);
    let datatype = DataType::from_code(code).ok_or_else(|| {
        format!(
            "{name}: unsupported NIfTI datatype code {code} \
             (readable: 2 uint8, 4 int16, 8 int32, 16 float32, 64 float64, 256 int8, 512 uint16, 768 uint32)"
        )
    })?;
    let bitpix = f.i16(72);
    if bitpix as usize != datatype.bytes() * 8 {
        return Err(format!(
            "{name}: bitpix {bitpix} does not match datatype code {code}"
        ));
    }

    let qfac = if f.f32(76) < 0.0 { -1.0 } else { 1.0 };
    let pixdim = [f.f32(80), f.f32(84), f.f32(88)].map(|p| if p > 0.0 { p } else { 1.0 });
    let vox_offset = f.f32(108);
    if vox_offset.is_nan() || vox_offset < HEADER_SIZE as f32 {
        return Err(format!(
            "{name}: vox_offset {vox_offset} points inside the header"
        ));
    }
    let qform_code = f.i16(252);
    let sform_code = f.i16(254);

    let affine = if sform_code > 0 {
        let row = |at: usize| [0, 1, 2, 3].map(|k| f.f32(at + 4 * k) as f64);
        [row(280), row(296), row(312)]
    } else if qform_code > 0 {
        let q = [f.f32(256), f.f32(260), f.f32(264)].map(f64::from);
        let offset = [f.f32(268), f.f32(272), f.f32(276)].map(f64::from);
        quaternion_affine(q, offset, pixdim.map(f64::from), qfac)
    } else {
        // NIfTI "method 1": no orientation, just the voxel size.
        [
            [pixdim[0] as f64, 0.0, 0.0, 0.0],
            [0.0, pixdim[1] as f64, 0.0, 0.0],
            [0.0, 0.0, pixdim[2] as f64, 0.0],
        ]
    };
    let det = det3(&affine);
    if !det.is_finite() || det.abs() < 1e-12 {
        return Err(format!("{name}: the voxel-to-RAS affine is singular"));
    }

    Ok(Header {
        little_endian: le,
        dims,
        pixdim,
        datatype,
        vox_offset: vox_offset as usize,
        scl_slope: f.f32(112),
        scl_inter: f.f32(116),
        affine,
    })
}

/// The qform rotation (quaternion b, c, d) times voxel size, plus the offset.
fn quaternion_affine(q: [f64; 3], offset: [f64; 3], pix: [f64; 3], qfac: f64) -> [[f64; 4]; 3] {
    let [b, c, d] = q;
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let scale = [pix[0], pix[1], pix[2] * qfac];
    let mut m = [[0.0; 4]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * scale[j];
        }
        m[i][3] = offset[i];
    }
    m
}

pub(crate) fn det3(m: &[[f64; 4]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// The voxel values as f32 with `scl_slope`/`scl_inter` applied.
fn voxels(name: &str, h: &Header, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let count = h.dims.iter().product::<usize>();
    let width = h.datatype.bytes();
    let need = h.vox_offset + count * width;
    if bytes.len() < need {
        return Err(format!(
            "{name}: voxel data is {} bytes, but dims {:?} of {:?} need {} (file truncated?)",
            bytes.len().saturating_sub(h.vox_offset),
            h.dims,
            h.datatype,
            count * width
        ));
    }
    let raw = &bytes[h.vox_offset..need];
    let le = h.little_endian;
    macro_rules! convert {
        ($t:ty) => {
            raw.chunks_exact(width)
                .map(|c| {
                    let a = c.try_into().expect("one voxel");
                    (if le {
                        <$t>::from_le_bytes(a)
                    } else {
                        <$t>::from_be_bytes(a)
                    }) as f32
                })
                .collect::<Vec<f32>>()
        };
    }
    let mut data = match h.datatype {
        DataType::U8 => raw.iter().map(|&v| v as f32).collect(),
        DataType::I8 => raw.iter().map(|&v| v as i8 as f32).collect(),
        DataType::I16 => convert!(i16),
        DataType::U16 => convert!(u16),
        DataType::I32 => convert!(i32),
        DataType::U32 => convert!(u32),
        DataType::F32 => convert!(f32),
        DataType::F64 => convert!(f64),
    };
    // NIfTI: a slope of 0 means "no scaling".
    let (slope, inter) = (h.scl_slope, h.scl_inter);
    if slope.is_finite() && slope != 0.0 && (slope != 1.0 || inter != 0.0) {
        let inter = if inter.is_finite() { inter } else { 0.0 };
        data.iter_mut().for_each(|v| *v = *v * slope + inter);
    }
    Ok(data)
}

/// Builds NIfTI-1 bytes (uncompressed, little endian, sform set) for tests and
/// tools that need small volumes of their own.
pub fn encode_u8(dims: [usize; 3], affine: [[f32; 4]; 3], data: &[u8]) -> Vec<u8> {
    encode_raw(dims, affine, data.len(), (2, 8), data)
}

/// Like [`encode_u8`], float32 voxels.
pub fn encode_f32(dims: [usize; 3], affine: [[f32; 4]; 3], data: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode_raw(dims, affine, data.len(), (16, 32), &bytes)
}

/// `(datatype, bitpix)`: the NIfTI code and bits per voxel of `bytes`.
fn encode_raw(
    dims: [usize; 3],
    affine: [[f32; 4]; 3],
    voxels: usize,
    (datatype, bitpix): (i16, i16),
    bytes: &[u8],
) -> Vec<u8> {
    assert_eq!(voxels, dims.iter().product::<usize>(), "data fills dims");
    let mut h = vec![0u8; 352];
    let put = |h: &mut Vec<u8>, at: usize, b: &[u8]| h[at..at + b.len()].copy_from_slice(b);
    put(&mut h, 0, &348i32.to_le_bytes());
    put(&mut h, 40, &3i16.to_le_bytes());
    for (i, d) in dims.iter().enumerate() {
        put(&mut h, 42 + 2 * i, &(*d as i16).to_le_bytes());
    }
    for i in 3..7 {
        put(&mut h, 42 + 2 * i, &1i16.to_le_bytes());
    }
    put(&mut h, 70, &datatype.to_le_bytes());
    put(&mut h, 72, &bitpix.to_le_bytes());
    put(&mut h, 76, &1f32.to_le_bytes());
    for i in 0..3 {
        let len = affine.iter().map(|row| row[i].powi(2)).sum::<f32>().sqrt();
        put(&mut h, 80 + 4 * i, &len.to_le_bytes());
    }
    put(&mut h, 108, &352f32.to_le_bytes());
    put(&mut h, 254, &1i16.to_le_bytes());
    for (row, at) in affine.iter().zip([280, 296, 312]) {
        for (k, v) in row.iter().enumerate() {
            put(&mut h, at + 4 * k, &v.to_le_bytes());
        }
    }
    put(&mut h, 344, b"n+1\0");
    h.extend_from_slice(bytes);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EYE: [[f32; 4]; 3] = [
        [2.0, 0.0, 0.0, -10.0],
        [0.0, 1.0, 0.0, 5.0],
        [0.0, 0.0, 1.5, 0.0],
    ];

    fn tiny() -> Vec<u8> {
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        encode_u8([2, 3, 4], EYE, &data)
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_dims_affine_and_x_fastest_values() {
        let v = read("tiny.nii", &tiny()).unwrap();
        assert_eq!(v.dims, [2, 3, 4]);
        assert_eq!(v.pixdim, [2.0, 1.0, 1.5]);
        assert_eq!(v.get(1, 0, 0), 1.0);
        assert_eq!(v.get(0, 1, 0), 2.0);
        assert_eq!(v.get(1, 2, 3), 23.0);
        assert_eq!(v.voxel_to_ras([1.0, 2.0, 2.0]), [-8.0, 7.0, 3.0]);
    }

    #[test]
    fn float_volumes_round_trip() {
        let data = [0.25f32, -1.5, 3.0e6, 0.0, 7.0, 1.0e-3];
        let v = read("f.nii", &encode_f32([3, 2, 1], EYE, &data)).unwrap();
        assert_eq!((v.dims, v.data.as_slice()), ([3, 2, 1], &data[..]));
        assert_eq!(v.affine[0], [2.0, 0.0, 0.0, -10.0]);
    }

    #[test]
    fn gzip_and_big_endian_read_the_same() {
        let plain = read("a.nii", &tiny()).unwrap();
        assert_eq!(read("a.nii.gz", &gz(&tiny())).unwrap(), plain);

        // Swap every multi-byte header field we read to big endian.
        let mut be = tiny();
        let swap = |b: &mut Vec<u8>, at: usize, n: usize| b[at..at + n].reverse();
        swap(&mut be, 0, 4);
        for at in (40..56).step_by(2).chain([70, 72, 252, 254]) {
            swap(&mut be, at, 2);
        }
        for at in (76..108)
            .step_by(4)
            .chain([108, 112, 116])
            .chain((256..328).step_by(4))
        {
            swap(&mut be, at, 4);
        }
        assert_eq!(read("be.nii", &be).unwrap(), plain);
    }

    #[test]
    fn int16_with_scaling() {
        let mut b = encode_u8([2, 1, 1], EYE, &[0, 0]);
        b.truncate(352);
        b[70..72].copy_from_slice(&4i16.to_le_bytes());
        b[72..74].copy_from_slice(&16i16.to_le_bytes());
        b[112..116].copy_from_slice(&0.5f32.to_le_bytes());
        b[116..120].copy_from_slice(&1f32.to_le_bytes());
        b.extend_from_slice(&(-4i16).to_le_bytes());
        b.extend_from_slice(&300i16.to_le_bytes());
        assert_eq!(read("s.nii", &b).unwrap().data, vec![-1.0, 151.0]);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let g = gz(&tiny());
        let e = read("cut.nii.gz", &g[..g.len() / 2]).unwrap_err();
        assert!(e.starts_with("cut.nii.gz:") && e.contains("gzip"), "{e}");

        let mut b = tiny();
        b[70..72].copy_from_slice(&3i16.to_le_bytes());
        let e = read("dt.nii", &b).unwrap_err();
        assert!(
            e.starts_with("dt.nii:") && e.contains("datatype code 3"),
            "{e}"
        );

        let e = read("short.nii", &tiny()[..360]).unwrap_err();
        assert!(
            e.starts_with("short.nii:") && e.contains("truncated"),
            "{e}"
        );

        let mut b = tiny();
        b[0..4].copy_from_slice(&540i32.to_le_bytes());
        let e = read("hdr.nii", &b).unwrap_err();
        assert!(e.starts_with("hdr.nii:") && e.contains("348"), "{e}");

        let mut b = tiny();
        b[344..348].copy_from_slice(b"xx1\0");
        let e = read("magic.nii", &b).unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn qform_is_used_without_sform() {
        let mut b = tiny();
        b[254..256].copy_from_slice(&0i16.to_le_bytes());
        b[252..254].copy_from_slice(&1i16.to_le_bytes());
        // Identity rotation (b = c = d = 0), offset (1, 2, 3).
        for (k, v) in [1f32, 2.0, 3.0].iter().enumerate() {
            b[268 + 4 * k..272 + 4 * k].copy_from_slice(&v.to_le_bytes());
        }
        let v = read("q.nii", &b).unwrap();
        assert_eq!(v.voxel_to_ras([1.0, 1.0, 2.0]), [3.0, 3.0, 6.0]);
    }
}
