//! Loads the school registry (CSV or Parquet with the standard columns), one file for every
//! school year or one per school year, and turns it into the `schools` table.
//!
//! A registry per school year ("2025-2026") applies from 1 September of its first year until the
//! next one starts; the oldest also to earlier dates, the newest to later ones, so every event
//! date has exactly one version. Events are joined to the version of their date through the
//! `registry_from` column both tables carry (see `warehouse`): a school that changes alliance or
//! zone in a new school year is counted with its old one for the old year's events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use datafusion::logical_expr::{Expr, col, lit, when};
use datafusion::sql::unparser::expr_to_sql;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use edubrain_schemas::School;
use edubrain_schemas::registry::{REGISTRY_COLUMNS, check_unique, school_from_fields};
use edubrain_schemas::warehouse::registry_schema;

use crate::CloudError;

/// A school year, "2025-2026", starting on 1 September of its first year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchoolYear(pub i32);

impl SchoolYear {
    pub fn parse(s: &str) -> Result<Self, CloudError> {
        let bad = || CloudError::Config(format!("school year {s:?} is not of the form 2025-2026"));
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (a, b): (i32, i32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if b != a + 1 || !(1900..=9998).contains(&a) {
            return Err(bad());
        }
        Ok(SchoolYear(a))
    }

    pub fn of(date: NaiveDate) -> Self {
        SchoolYear(if date.month() >= 9 { date.year() } else { date.year() - 1 })
    }

    pub fn label(self) -> String {
        format!("{}-{}", self.0, self.0 + 1)
    }

    /// 1 September of its first year, as the `date` partition column writes dates.
    pub fn start(self) -> String {
        format!("{:04}-09-01", self.0)
    }
}

/// Start of the version that applies to every date (a registry without school years).
pub const ALWAYS: &str = "0000-01-01";

/// The registry: one version, or one per school year.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// Oldest first; `None` only for a single version that applies to every date.
    versions: Vec<(Option<SchoolYear>, Vec<School>)>,
}

impl Registry {
    /// One registry for every date.
    pub fn single(schools: Vec<School>) -> Self {
        Registry { versions: vec![(None, schools)] }
    }

    /// One registry per school year (at least one).
    pub fn by_year(years: BTreeMap<SchoolYear, Vec<School>>) -> Result<Self, CloudError> {
        if years.is_empty() {
            return Err(CloudError::Config("registries: at least one school year is needed".into()));
        }
        Ok(Registry { versions: years.into_iter().map(|(y, s)| (Some(y), s)).collect() })
    }

    /// Reads `registries` ("2025-2026" = path, one per school year) or else `registry` (one
    /// file for every date) or else none (an empty registry).
    pub fn load(single: Option<&Path>, by_year: &BTreeMap<String, PathBuf>) -> Result<Self, CloudError> {
        if !by_year.is_empty() {
            if single.is_some() {
                return Err(CloudError::Config("give either registry or registries, not both".into()));
            }
            let mut years = BTreeMap::new();
            for (label, path) in by_year {
                years.insert(SchoolYear::parse(label)?, load(path)?);
            }
            return Registry::by_year(years);
        }
        Ok(Registry::single(match single {
            Some(p) => load(p)?,
            None => Vec::new(),
        }))
    }

    /// The newest version's schools (what registry-only analytics use by default).
    pub fn newest(&self) -> &[School] {
        &self.versions.last().expect("a registry has a version").1
    }

    /// The schools of the version that applies on `date`.
    pub fn on(&self, date: NaiveDate) -> &[School] {
        let from = date.format("%Y-%m-%d").to_string();
        let i = (0..self.versions.len()).rev().find(|&i| self.valid_from(i).as_str() <= from.as_str()).unwrap_or(0);
        &self.versions[i].1
    }

    /// The schools of one school year (`None` if the registry has no version for it).
    pub fn year(&self, year: SchoolYear) -> Option<&[School]> {
        self.versions.iter().find(|(y, _)| *y == Some(year)).map(|(_, s)| s.as_slice())
    }

    /// The school years it has, oldest first (empty for a single version).
    pub fn school_years(&self) -> Vec<String> {
        self.versions.iter().filter_map(|(y, _)| y.map(SchoolYear::label)).collect()
    }

    /// The first date version `i` applies to (`YYYY-MM-DD`).
    fn valid_from(&self, i: usize) -> String {
        match self.versions[i].0 {
            Some(y) if i > 0 => y.start(),
            _ => ALWAYS.to_string(),
        }
    }

    /// The same registry with only the schools `keep` accepts, in every version.
    pub fn filter(&self, keep: impl Fn(&School) -> bool) -> Registry {
        Registry { versions: self.versions.iter().map(|(y, s)| (*y, s.iter().filter(|x| keep(x)).cloned().collect())).collect() }
    }

    /// (valid_from, schools) of every version.
    pub fn versions(&self) -> impl Iterator<Item = (String, &[School])> {
        (0..self.versions.len()).map(|i| (self.valid_from(i), self.versions[i].1.as_slice()))
    }

    /// The `registry_from` of an event: the start of the version its `date` falls in.
    ///
    /// With one version every event's is [`ALWAYS`], but it is still written as a `CASE` on
    /// `date` rather than a literal. DataFusion takes a constant column as sorted, and an
    /// aggregate grouping by a sorted column runs in streaming mode, which its vectorized group
    /// hashing does not support (apache/datafusion#23338 is the same choice for sorted input):
    /// the utilisation queries, grouping every heartbeat by school, classroom and
    /// `registry_from`, spent 0.58 s aggregating 6M of them instead of 0.26 s.
    pub fn registry_from_expr(&self) -> Expr {
        self.registry_from_of(col("date"))
    }

    /// [`Registry::registry_from_expr`] as SQL on the `YYYY-MM-DD` text column `date_column`
    /// (DataFusion's unparser writes it), for queries that group by day first and find each
    /// day's version afterwards, on a few rows rather than on every event.
    pub fn registry_from_sql(&self, date_column: &str) -> String {
        expr_to_sql(&self.registry_from_of(col(date_column))).expect("a CASE of column comparisons and literals unparses").to_string()
    }

    /// The start of the version `date` falls in, newest version first.
    fn registry_from_of(&self, date: Expr) -> Expr {
        let mut starts: Vec<String> = (1..self.versions.len()).map(|i| self.valid_from(i)).collect();
        starts.reverse();
        let first = starts.first().cloned().unwrap_or_else(|| ALWAYS.to_string());
        let mut case = when(date.clone().gt_eq(lit(first.clone())), lit(first));
        for s in starts.iter().skip(1) {
            case = case.when(date.clone().gt_eq(lit(s.clone())), lit(s.clone()));
        }
        case.otherwise(lit(ALWAYS)).expect("a CASE with branches")
    }

    /// The `schools` table: every version's rows with `school_year` and `registry_from`.
    pub fn to_batch(&self) -> RecordBatch {
        let mut batches = Vec::new();
        for i in 0..self.versions.len() {
            let (year, schools) = &self.versions[i];
            let base = to_batch(schools);
            let n = base.num_rows();
            let mut columns = base.columns().to_vec();
            let mut fields: Vec<datafusion::arrow::datatypes::FieldRef> = base.schema().fields().iter().cloned().collect();
            columns.push(Arc::new(StringArray::from(vec![year.map(SchoolYear::label); n])));
            fields.push(Arc::new(datafusion::arrow::datatypes::Field::new("school_year", DataType::Utf8, true)));
            columns.push(Arc::new(StringArray::from(vec![self.valid_from(i); n])));
            fields.push(Arc::new(datafusion::arrow::datatypes::Field::new("registry_from", DataType::Utf8, false)));
            let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
            batches.push(RecordBatch::try_new(schema, columns).expect("columns match"));
        }
        let schema = batches[0].schema();
        datafusion::arrow::compute::concat_batches(&schema, &batches).expect("same schema")
    }
}

impl From<Vec<School>> for Registry {
    fn from(schools: Vec<School>) -> Self {
        Registry::single(schools)
    }
}

/// Reads a registry file; `.parquet` files are read as Parquet, anything else as CSV.
pub fn load(path: &Path) -> Result<Vec<School>, CloudError> {
    if path.extension().is_some_and(|e| e == "parquet") { load_parquet(path) } else { Ok(edubrain_schemas::registry::read_csv_file(path)?) }
}

fn load_parquet(path: &Path) -> Result<Vec<School>, CloudError> {
    let err = |message: String| CloudError::Parquet { path: path.display().to_string(), message };
    let file = std::fs::File::open(path).map_err(CloudError::io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(e.to_string()))?.build().map_err(|e| err(e.to_string()))?;
    let mut schools = Vec::new();
    let mut row = 1u64; // line 1 is the header, as in the CSV
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        let mut columns: Vec<StringArray> = Vec::with_capacity(REGISTRY_COLUMNS.len());
        for name in REGISTRY_COLUMNS {
            let col = batch.column_by_name(name).ok_or_else(|| err(format!("missing column {name:?}")))?;
            let text = cast(col, &DataType::Utf8).map_err(|e| err(format!("column {name}: {e}")))?;
            columns.push(text.as_any().downcast_ref::<StringArray>().expect("cast to Utf8").clone());
        }
        for i in 0..batch.num_rows() {
            row += 1;
            schools.push(school_from_fields(row, |c| if columns[c].is_null(i) { String::new() } else { columns[c].value(i).to_string() })?);
        }
    }
    check_unique(&schools)?;
    Ok(schools)
}

/// The registry as one Arrow batch of [`registry_schema`].
pub fn to_batch(schools: &[School]) -> RecordBatch {
    let s = |f: fn(&School) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(schools.iter().map(f))) };
    let u = |f: fn(&School) -> u32| -> ArrayRef { Arc::new(UInt32Array::from_iter_values(schools.iter().map(f))) };
    let x = |f: fn(&School) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(schools.iter().map(f))) };
    RecordBatch::try_new(
        registry_schema(),
        vec![
            s(|r| &r.school_id),
            s(|r| &r.school_name),
            s(|r| &r.city),
            s(|r| &r.county),
            s(|r| &r.alliance),
            s(|r| &r.zone),
            s(|r| r.locale.as_str()),
            s(|r| r.level.as_str()),
            u(|r| r.enrolment),
            u(|r| r.teachers_total),
            u(|r| r.teachers_qualified),
            u(|r| r.key_teachers),
            u(|r| r.pe_art_teachers),
            u(|r| r.senior_title_teachers),
            x(|r| r.floor_area_m2),
            x(|r| r.sports_area_m2),
            x(|r| r.equipment_value_yuan),
            u(|r| r.multimedia_classrooms),
            x(|r| r.funding_yuan),
            Arc::new(BooleanArray::from(schools.iter().map(|r| r.strong).collect::<Vec<_>>())),
        ],
    )
    .expect("columns match the registry schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::parquet::arrow::ArrowWriter;

    #[test]
    fn parquet_registry_reads_like_the_csv() {
        let csv = "school_id,school_name,city,county,alliance,zone,locale,level,enrolment,teachers_total,teachers_qualified,key_teachers,pe_art_teachers,senior_title_teachers,floor_area_m2,sports_area_m2,equipment_value_yuan,multimedia_classrooms,funding_yuan,strong\n\
                   s1,一中,c01,k1,a1,z1,urban,primary,800,50,48,6,5,16,6000,8000,2400000,20,9600000,true\n\
                   s2,二小,c01,k1,a1,z1,rural,primary,200,16,14,1,1,2,1800,2400,240000,4,1800000,false\n";
        let schools = edubrain_schemas::registry::read_csv(csv.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.parquet");
        let mut w = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), registry_schema(), None).unwrap();
        w.write(&to_batch(&schools)).unwrap();
        w.close().unwrap();
        assert_eq!(load(&path).unwrap(), schools);
    }

    #[test]
    fn school_years_parse_and_contain_dates() {
        assert_eq!(SchoolYear::parse("2025-2026").unwrap(), SchoolYear(2025));
        for bad in ["2025-2027", "2025", "x-y", "2025/2026"] {
            assert!(SchoolYear::parse(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
        assert_eq!(SchoolYear::of(NaiveDate::from_ymd_opt(2026, 8, 31).unwrap()), SchoolYear(2025));
        assert_eq!(SchoolYear::of(NaiveDate::from_ymd_opt(2026, 9, 1).unwrap()), SchoolYear(2026));
        assert_eq!(SchoolYear(2026).label(), "2026-2027");
    }

    #[test]
    fn every_date_has_exactly_one_version() {
        let csv = |alliance: &str| {
            format!(
                "school_id,school_name,city,county,alliance,zone,locale,level,enrolment,teachers_total,teachers_qualified,key_teachers,pe_art_teachers,senior_title_teachers,floor_area_m2,sports_area_m2,equipment_value_yuan,multimedia_classrooms,funding_yuan,strong\n\
                     s1,x,c01,k1,{alliance},z1,urban,primary,800,50,48,6,5,16,6000,8000,2400000,20,9600000,true\n"
            )
        };
        let read = |a: &str| edubrain_schemas::registry::read_csv(csv(a).as_bytes()).unwrap();
        let r = Registry::by_year(BTreeMap::from([(SchoolYear(2025), read("a1")), (SchoolYear(2026), read("a2"))])).unwrap();
        let on = |y, m, d| r.on(NaiveDate::from_ymd_opt(y, m, d).unwrap())[0].alliance.clone();
        assert_eq!(on(2024, 1, 1), "a1"); // before the oldest: the oldest
        assert_eq!(on(2026, 8, 31), "a1");
        assert_eq!(on(2026, 9, 1), "a2");
        assert_eq!(on(2030, 1, 1), "a2"); // after the newest: the newest
        assert_eq!(r.newest()[0].alliance, "a2");
        assert_eq!(r.school_years(), ["2025-2026", "2026-2027"]);
        let batch = r.to_batch();
        assert_eq!(batch.num_rows(), 2);
        let from = batch.column_by_name("registry_from").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((from.value(0), from.value(1)), (ALWAYS, "2026-09-01"));
        assert_eq!(Registry::single(read("a1")).on(NaiveDate::from_ymd_opt(1999, 1, 1).unwrap())[0].alliance, "a1");
    }
}
