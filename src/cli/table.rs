//! Aligned text columns for `get` and `status`, like `kubectl get`.

/// Renders a header row and data rows with columns padded to the widest cell, separated by
/// three spaces. The last column is not padded, so lines carry no trailing spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let rows = vec![
            vec!["books".to_owned(), "books:1.4.2".to_owned(), "3".to_owned()],
            vec!["a".to_owned(), "-".to_owned(), "12".to_owned()],
        ];
        let expected = "\
NAME    IMAGE         REPLICAS
books   books:1.4.2   3
a       -             12
";
        assert_eq!(render(&["NAME", "IMAGE", "REPLICAS"], &rows), expected);
    }
}
