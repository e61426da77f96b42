//! "Did you mean" for unknown keys: the closest known key or section by edit distance.

use std::collections::BTreeSet;

pub(crate) fn unknown_message(key: &str, known: &BTreeSet<String>) -> String {
    let sections: BTreeSet<&str> = known.iter().filter_map(|k| k.split('.').next()).collect();
    match key.split_once('.') {
        None if sections.contains(key) => format!(": `{key}` is a section, not a value"),
        None => format!(
            ": unknown key (keys belong in a section: {})",
            sections.into_iter().collect::<Vec<_>>().join(", ")
        ),
        Some((section, _)) if !sections.contains(section) => format!(
            ": unknown section `{section}`{}",
            suggestion(section, &sections.iter().map(|s| s.to_string()).collect())
        ),
        Some(_) => format!(": unknown key{}", suggestion(key, known)),
    }
}

/// "; did you mean `x`?" for the closest known name, when one is close.
pub(crate) fn suggestion(key: &str, known: &BTreeSet<String>) -> String {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
