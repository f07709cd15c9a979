//! Logical names ↔ AWS ids. The desired state refers to other resources by logical name;
//! AWS calls want ids, and what AWS reports names ids. One type answers each way.

use std::collections::HashMap;

use anyhow::Context;

/// The ids of resources by logical name, as known so far while applying changes.
#[derive(Debug, Clone, Default)]
pub struct Ids(HashMap<String, String>);

impl Ids {
    pub fn insert(&mut self, name: String, id: String) {
        self.0.insert(name, id);
    }

    /// The logical name of the resource with `id`, if it is one of these.
    pub fn name_with_id(&self, id: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, known)| known.as_str() == id)
            .map(|(name, _)| name.as_str())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The id of `name`; an error when it does not exist (yet).
    pub fn id_of(&self, name: &str) -> anyhow::Result<String> {
        self.get(name)
            .map(str::to_owned)
            .with_context(|| format!("{name} does not exist yet"))
    }

    /// The ids of a comma-separated list of names (empty entries skipped).
    pub fn ids_of_list(&self, names: &str) -> anyhow::Result<Vec<String>> {
        names
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| self.id_of(n))
            .collect()
    }
}

impl FromIterator<(String, String)> for Ids {
    /// From `(name, id)` pairs.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }
}

/// Logical names by AWS id, so what AWS reports compares with the desired state.
#[derive(Debug, Clone, Default)]
pub struct NamesById(HashMap<String, String>);

impl NamesById {
    pub fn insert(&mut self, id: String, name: String) {
        self.0.insert(id, name);
    }

    /// The name of `id`, or the id itself when it is not one of the stack's.
    pub fn name_of(&self, id: &str) -> String {
        self.0.get(id).cloned().unwrap_or_else(|| id.to_owned())
    }
}

impl Extend<(String, String)> for NamesById {
    /// `(id, name)` pairs.
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, pairs: I) {
        self.0.extend(pairs);
    }
}

impl FromIterator<(String, String)> for NamesById {
    /// From `(id, name)` pairs.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_answer_by_name_and_names_by_id() {
        let ids: Ids = [
            ("anb-vpc", "vpc-1"),
            ("anb-public-a", "subnet-1"),
            ("anb-public-b", "subnet-2"),
        ]
        .map(|(n, i)| (n.to_owned(), i.to_owned()))
        .into_iter()
        .collect();
        assert_eq!(ids.id_of("anb-vpc").unwrap(), "vpc-1");
        assert!(ids
            .id_of("anb-nothing")
            .unwrap_err()
            .to_string()
            .contains("does not exist yet"));
        assert_eq!(
            ids.ids_of_list("anb-public-a,anb-public-b,").unwrap(),
            ["subnet-1", "subnet-2"]
        );
        let names: NamesById = [("vpc-1".to_owned(), "anb-vpc".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(names.name_of("vpc-1"), "anb-vpc");
        assert_eq!(names.name_of("sg-outside"), "sg-outside");
    }
}
