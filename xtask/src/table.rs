//! A Markdown table, the one way every report writes one: a header, then rows of cells
//! already formatted as the report wants them.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have a cell per column.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        assert_eq!(
            cells.len(),
            self.header.len(),
            "a row of {:?} has {} cells",
            self.header,
            cells.len()
        );
        self.rows.push(cells);
        self
    }

    /// `| a | b |`, `|---|---|`, then a line per row, each ending in a newline. A `|` in a
    /// cell is escaped so it cannot split the cell.
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&self.header);
        out.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn a_table_is_a_header_a_rule_and_its_rows() {
        let mut table = Table::new(&["phase", "videos"]);
        table
            .row(["burst", "100"])
            .row(["a|b".to_owned(), "–".to_owned()]);
        assert_eq!(
            table.markdown(),
            "| phase | videos |\n|---|---|\n| burst | 100 |\n| a\\|b | – |\n"
        );
    }

    #[test]
    #[should_panic(expected = "has 1 cells")]
    fn a_row_short_of_a_cell_is_a_bug() {
        Table::new(&["phase", "videos"]).row(["burst"]);
    }
}
