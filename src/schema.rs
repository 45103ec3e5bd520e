//! The Postgres schema that holds the read model, as a validated name.
//!
//! DDL cannot bind an identifier as a parameter, so the name is quoted into
//! SQL text (`CREATE SCHEMA "…"`). A [`Schema`] can only be made by
//! [`Schema::parse`], which admits plain lowercase identifiers: holding one
//! is the proof that quoting it is safe, and no function that takes one has
//! to check again.

use std::fmt;

/// A plain lowercase SQL identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes,
/// not `pg_…`), safe to quote into DDL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

/// Why a name is not a usable schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` must be a lowercase identifier ([a-z_][a-z0-9_]*, at most 63 characters, not starting with pg_)"
)]
pub struct InvalidSchema(pub String);

impl Schema {
    pub fn parse(name: &str) -> Result<Schema, InvalidSchema> {
        let mut chars = name.chars();
        let valid = matches!(chars.next(), Some('a'..='z' | '_'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
            // Postgres truncates longer identifiers; pg_ names are reserved.
            && name.len() <= 63
            && !name.starts_with("pg_");
        if valid {
            Ok(Schema(name.to_owned()))
        } else {
            Err(InvalidSchema(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Schema {
    /// Postgres's default schema (`DATABASE_SCHEMA`'s default).
    fn default() -> Schema {
        Schema("public".to_owned())
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_lowercase_identifiers() {
        for name in ["public", "intuition_mainnet_2", "_x", &"a".repeat(63)] {
            assert_eq!(Schema::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_what_could_not_be_quoted_safely() {
        for name in [
            "",
            "pg_catalog",
            "a\"b",
            "1abc",
            "Public",
            "a b",
            "a-b",
            "é",
            &"a".repeat(64),
        ] {
            assert_eq!(Schema::parse(name), Err(InvalidSchema(name.to_owned())));
        }
        assert_eq!(
            InvalidSchema("a\"b".into()).to_string(),
            "`a\"b` must be a lowercase identifier ([a-z_][a-z0-9_]*, at most 63 characters, not starting with pg_)"
        );
    }
}
