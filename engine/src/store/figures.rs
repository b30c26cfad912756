//! The statistics counters' read query, one SQL text for both backends: the sum of each
//! figure of each group over the counters that cover a period ([`crate::domain::figures::cover`]).

use sqlx::QueryBuilder;

use super::row::Get;
use super::Error;
use crate::domain::figures::{Cover, Figure, Grain, Group, Side};

/// Which counters to sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterQuery {
    /// The period, as counters cover it.
    pub cover: Cover,
    /// One region only.
    pub region: Option<String>,
    /// One department only (approving or supervising).
    pub department: Option<String>,
    /// One office only (supervision figures; approval figures have none and are kept).
    pub office: Option<String>,
}

/// One figure of one group, summed over the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summed {
    /// Who it counts for.
    pub group: Group,
    /// Which figure.
    pub figure: Figure,
    /// The count.
    pub n: u64,
}

/// Builds the query on `q` (empty).
pub(crate) fn build<'a, DB>(q: &mut QueryBuilder<'a, DB>, query: &'a CounterQuery)
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.push("SELECT side, region, department, office, figure, CAST(SUM(n) AS BIGINT) AS n FROM figure_counts WHERE (");
    let mut first = true;
    let mut range = |q: &mut QueryBuilder<'a, DB>, grain: Grain, (from, to): &'a (String, String)| {
        if !first {
            q.push(" OR ");
        }
        first = false;
        q.push("(grain = ").push_bind(grain.as_str());
        q.push(" AND period >= ").push_bind(from.as_str());
        q.push(" AND period <= ").push_bind(to.as_str()).push(")");
    };
    if let Some(months) = &query.cover.months {
        range(q, Grain::Month, months);
    }
    for days in &query.cover.days {
        range(q, Grain::Day, days);
    }
    q.push(")");
    if let Some(region) = &query.region {
        q.push(" AND region = ").push_bind(region.as_str());
    }
    if let Some(department) = &query.department {
        q.push(" AND department = ").push_bind(department.as_str());
    }
    if let Some(office) = &query.office {
        q.push(" AND (side = 'approval' OR office = ").push_bind(office.as_str()).push(")");
    }
    q.push(" GROUP BY side, region, department, office, figure HAVING SUM(n) <> 0");
}

/// Decodes one answered row.
pub(crate) fn decode(r: &impl Get) -> Result<Summed, Error> {
    let side = r.text("side")?;
    let figure = r.text("figure")?;
    let corrupt = |what: &str, v: &str| Error::Corrupt(format!("figure_counts: unknown {what} {v:?}"));
    Ok(Summed {
        group: Group {
            side: Side::parse(&side).ok_or_else(|| corrupt("side", &side))?,
            region: r.text("region")?,
            department: r.text("department")?,
            office: r.text("office")?,
        },
        figure: Figure::parse(&figure).ok_or_else(|| corrupt("figure", &figure))?,
        // A negative sum would be a counting defect; it shows as 0 and `admin verify` names it.
        n: u64::try_from(r.int("n")?).unwrap_or(0),
    })
}
