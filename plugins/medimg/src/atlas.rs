//! The 8 classes the segmentation task learns, and how AAL's 116 regions
//! group into them by name: shared by the segmentation plugin (decoding
//! Colin27 with AAL) and the host's pseudo-subject generator.

use crate::Volume;

/// Class index = position. "Deep grey" is the basal ganglia and thalamus.
pub const CLASS_NAMES: [&str; 8] = [
    "background",
    "frontal",
    "temporal",
    "parietal",
    "occipital",
    "limbic_insula",
    "deep_grey",
    "cerebellum",
];

/// AAL region name prefix -> class index in [`CLASS_NAMES`]. Every region in
/// the atlas's name table must match exactly one rule (checked when decoding).
pub const LOBE_OF_REGION: &[(&str, u8)] = &[
    ("Precentral", 1),
    ("Frontal", 1),
    ("Rolandic_Oper", 1),
    ("Supp_Motor_Area", 1),
    ("Olfactory", 1),
    ("Rectus", 1),
    ("Paracentral_Lobule", 1),
    ("Temporal", 2),
    ("Heschl", 2),
    ("Fusiform", 2),
    ("Postcentral", 3),
    ("Parietal", 3),
    ("SupraMarginal", 3),
    ("Angular", 3),
    ("Precuneus", 3),
    ("Calcarine", 4),
    ("Cuneus", 4),
    ("Lingual", 4),
    ("Occipital", 4),
    ("Insula", 5),
    ("Cingulum", 5),
    ("Hippocampus", 5),
    ("ParaHippocampal", 5),
    ("Amygdala", 5),
    ("Caudate", 6),
    ("Putamen", 6),
    ("Pallidum", 6),
    ("Thalamus", 6),
    ("Cerebelum", 7),
    ("Vermis", 7),
];

/// Class of each AAL label value (index = value), from the atlas's name
/// table (`<value> <name> [...]` per line) and [`LOBE_OF_REGION`].
pub fn lobe_table(file: &str, text: &str) -> Result<Vec<u8>, String> {
    let mut table = vec![0u8; 1];
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(value), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        let value: usize = value
            .parse()
            .map_err(|_| format!("{file}: line {}: `{value}` is not a label value", n + 1))?;
        let class = LOBE_OF_REGION
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|&(_, c)| c)
            .ok_or_else(|| {
                format!(
                    "{file}: line {}: region `{name}` belongs to no class group",
                    n + 1
                )
            })?;
        if value == 0 || value > u16::MAX as usize {
            return Err(format!(
                "{file}: line {}: label value {value} is out of range",
                n + 1
            ));
        }
        if table.len() <= value {
            table.resize(value + 1, 0);
        }
        table[value] = class;
    }
    if table.len() == 1 {
        return Err(format!("{file}: no `<value> <name>` lines"));
    }
    Ok(table)
}

/// A per-voxel class volume: atlas values mapped through `table`.
pub fn classes_from_atlas(
    atlas: &Volume,
    table: &[u8],
    atlas_file: &str,
    names_file: &str,
) -> Result<Volume, String> {
    let mut data = Vec::with_capacity(atlas.data.len());
    for &v in &atlas.data {
        let i = v as usize;
        if v < 0.0 || v.fract() != 0.0 || i >= table.len() || (i > 0 && table[i] == 0) {
            return Err(format!(
                "{atlas_file}: label value {v} has no name in {names_file}"
            ));
        }
        data.push(table[i] as f32);
    }
    Ok(Volume {
        data,
        ..atlas.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &str =
        "1 Precentral_L 2001\n2 Precuneus_R 2002\n3 Cuneus_L 5001\n4 Vermis_3 9001\n";

    #[test]
    fn lobe_table_groups_by_name() {
        let t = lobe_table("names.txt", NAMES).unwrap();
        assert_eq!(t, vec![0, 1, 3, 4, 7]);
        let e = lobe_table("names.txt", "5 Brainstem 1\n").unwrap_err();
        assert!(
            e.starts_with("names.txt: line 1") && e.contains("Brainstem"),
            "{e}"
        );
    }

    #[test]
    fn every_real_aal_region_has_a_class() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/raw/mricron/aal.nii.txt"
        );
        let text = std::fs::read_to_string(path).expect("run host/scripts/fetch-data.sh");
        let t = lobe_table("aal.nii.txt", &text).unwrap();
        assert_eq!(t.len(), 117);
        assert!(t[1..].iter().all(|&c| (1..8).contains(&c)));
        // Hippocampus (37/38) is limbic, thalamus (77/78) deep grey.
        assert_eq!((t[37], t[38], t[77], t[78]), (5, 5, 6, 6));
        for c in 1..8u8 {
            assert!(
                t.contains(&c),
                "class {} has no region",
                CLASS_NAMES[c as usize]
            );
        }
    }
}
