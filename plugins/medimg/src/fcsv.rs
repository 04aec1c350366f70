//! 3D Slicer markups fiducial files (`.fcsv`): CSV with `#` header lines.
//! The `# columns = ...` line, when present, says where x, y, z, label and
//! desc are; `# CoordinateSystem = 1` (or `LPS`) means LPS, which is turned
//! into RAS.

/// One fiducial point in RAS millimetres.
#[derive(Clone, Debug, PartialEq)]
pub struct Fiducial {
    pub id: String,
    pub label: String,
    pub desc: String,
    pub ras: [f64; 3],
}

const DEFAULT_COLUMNS: &str = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID";

/// Parses the text of an `.fcsv` file; `name` labels errors.
pub fn read(name: &str, bytes: &[u8]) -> Result<Vec<Fiducial>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("{name}: not UTF-8 text ({e})"))?;
    let mut columns: Vec<String> = DEFAULT_COLUMNS.split(',').map(String::from).collect();
    let mut lps = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(meta) = line.strip_prefix('#') {
            if let Some((key, value)) = meta.split_once('=') {
                match key.trim() {
                    "columns" => {
                        columns = value.trim().split(',').map(|s| s.trim().into()).collect()
                    }
                    "CoordinateSystem" => lps = matches!(value.trim(), "1" | "LPS"),
                    _ => {}
                }
            }
            continue;
        }
        let cells: Vec<&str> = line.split(',').collect();
        let col = |key: &str| -> Result<&str, String> {
            let i = columns
                .iter()
                .position(|c| c == key)
                .ok_or_else(|| format!("{name}: the columns line has no `{key}` column"))?;
            cells.get(i).copied().ok_or_else(|| {
                format!(
                    "{name}: line {} has {} fields, no `{key}`",
                    n + 1,
                    cells.len()
                )
            })
        };
        let num = |key: &str| -> Result<f64, String> {
            let s = col(key)?;
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("{name}: line {}: `{key}` = `{s}` is not a number", n + 1))
        };
        let mut ras = [num("x")?, num("y")?, num("z")?];
        if lps {
            ras[0] = -ras[0];
            ras[1] = -ras[1];
        }
        out.push(Fiducial {
            id: col("id")?.into(),
            label: col("label").unwrap_or_default().into(),
            desc: col("desc").unwrap_or_default().into(),
            ras,
        });
    }
    if out.is_empty() {
        return Err(format!("{name}: no fiducials in the file"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# Markups fiducial file version = 4.6\n\
        # CoordinateSystem = 0\n\
        # columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n\
        n_1,-0.5,2.75,-4.0,0,0,0,1,1,1,0,1,AC,vol\n\
        n_2,0,-25,-2.25,0,0,0,1,1,1,0,2,PC,vol\n";

    #[test]
    fn reads_points_labels_and_descriptions() {
        let f = read("afids.fcsv", TEXT.as_bytes()).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].ras, [-0.5, 2.75, -4.0]);
        assert_eq!((f[1].label.as_str(), f[1].desc.as_str()), ("2", "PC"));
    }

    #[test]
    fn lps_files_are_turned_into_ras() {
        let text = TEXT.replace("CoordinateSystem = 0", "CoordinateSystem = LPS");
        let f = read("lps.fcsv", text.as_bytes()).unwrap();
        assert_eq!(f[0].ras, [0.5, -2.75, -4.0]);
    }

    #[test]
    fn bad_numbers_name_the_file_and_line() {
        let text = TEXT.replace("2.75", "two");
        let e = read("bad.fcsv", text.as_bytes()).unwrap_err();
        assert!(
            e.starts_with("bad.fcsv: line 4") && e.contains("`y`"),
            "{e}"
        );
    }
}
