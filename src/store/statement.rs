//! A statement with its parameters: the text numbers them `$1, $2, …` (both SQLite and PostgreSQL read
//! that form), each value is bound once however often the text uses it, and the dialect binds each as
//! its database stores it ([`Dialect::query`](super::dialect::Dialect::query)).

use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::fmt;

/// One bound value, as the store's columns hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param<'a> {
    /// Text, or NULL.
    Text(Option<&'a str>),
    /// A time, or NULL (sortable UTC text in SQLite, `timestamptz` in PostgreSQL).
    Time(Option<DateTime<Utc>>),
    /// A whole number (`bigint`; PostgreSQL compares it with `integer` columns as it is).
    Integer(i64),
}

/// A statement's text and the values its `$n` placeholders stand for, in order.
#[derive(Debug)]
pub struct Statement<'a> {
    sql: Cow<'static, str>,
    params: Vec<Param<'a>>,
}

/// The placeholder of a value bound with [`Statement::bind`], written `$n` in the text.
#[derive(Clone, Copy, Debug)]
pub struct Placeholder(usize);

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.0)
    }
}

impl<'a> Statement<'a> {
    /// A statement whose text numbers its placeholders; bind its values in that order.
    pub fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Self {
            sql: sql.into(),
            params: Vec::with_capacity(8),
        }
    }

    /// Binds the next value (`$1` first) and says its placeholder, for text built as it binds.
    pub fn bind(&mut self, param: Param<'a>) -> Placeholder {
        self.params.push(param);
        Placeholder(self.params.len())
    }

    /// Appends to the text.
    pub fn push_sql(&mut self, sql: &str) {
        self.sql.to_mut().push_str(sql);
    }

    /// Binds a text value.
    pub fn text(self, value: &'a str) -> Self {
        self.with(Param::Text(Some(value)))
    }

    /// Binds a text value or NULL.
    pub fn optional_text(self, value: Option<&'a str>) -> Self {
        self.with(Param::Text(value))
    }

    /// Binds a time.
    pub fn time(self, value: DateTime<Utc>) -> Self {
        self.with(Param::Time(Some(value)))
    }

    /// Binds a whole number.
    pub fn integer(self, value: impl Into<i64>) -> Self {
        self.with(Param::Integer(value.into()))
    }

    fn with(mut self, param: Param<'a>) -> Self {
        self.bind(param);
        self
    }

    /// The text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The values bound, in order.
    pub fn params(&self) -> &[Param<'a>] {
        &self.params
    }

    /// The text and the values, for a dialect to bind.
    pub fn into_parts(self) -> (Cow<'static, str>, Vec<Param<'a>>) {
        (self.sql, self.params)
    }
}

/// The numbers of the placeholders a text uses (`$12` is 12), in order of use.
#[cfg(test)]
pub fn placeholders(sql: &str) -> Vec<usize> {
    let mut numbers = Vec::new();
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        let digits: String = rest[at + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            numbers.push(n);
        }
        rest = &rest[at + 1..];
    }
    numbers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_bound_while_the_text_is_built_gets_the_next_number() {
        let mut statement = Statement::new("SELECT 1 WHERE a = $1").text("a");
        let b = statement.bind(Param::Integer(7));
        statement.push_sql(&format!(" AND b = {b} AND c = {b}"));
        assert_eq!(
            statement.sql(),
            "SELECT 1 WHERE a = $1 AND b = $2 AND c = $2"
        );
        assert_eq!(
            statement.params(),
            &[Param::Text(Some("a")), Param::Integer(7)]
        );
        assert_eq!(placeholders(statement.sql()), vec![1, 2, 2]);
    }
}
