//! The school registry (master data): one row per school and level, as CSV with exactly the
//! columns of [`REGISTRY_COLUMNS`] (documented in schemas/README.md).
//!
//! Parsing is strict: a wrong header, an unparsable value or an impossible combination is an
//! error naming the line and the column, never a silently skipped row.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::SchemaError;
use crate::validate::check_id;

pub const REGISTRY_COLUMNS: [&str; 20] = [
    "school_id",
    "school_name",
    "city",
    "county",
    "alliance",
    "zone",
    "locale",
    "level",
    "enrolment",
    "teachers_total",
    "teachers_qualified",
    "key_teachers",
    "pe_art_teachers",
    "senior_title_teachers",
    "floor_area_m2",
    "sports_area_m2",
    "equipment_value_yuan",
    "multimedia_classrooms",
    "funding_yuan",
    "strong",
];

/// 城区 / 镇区 / 乡村.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    Urban,
    Town,
    Rural,
}

impl Locale {
    pub fn as_str(self) -> &'static str {
        match self {
            Locale::Urban => "urban",
            Locale::Town => "town",
            Locale::Rural => "rural",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "urban" => Some(Locale::Urban),
            "town" => Some(Locale::Town),
            "rural" => Some(Locale::Rural),
            _ => None,
        }
    }
}

/// School level; a through-school has one registry row per level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Primary,
    Junior,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Primary => "primary",
            Level::Junior => "junior",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "primary" => Some(Level::Primary),
            "junior" => Some(Level::Junior),
            _ => None,
        }
    }
}

/// One registry row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct School {
    pub school_id: String,
    pub school_name: String,
    pub city: String,
    pub county: String,
    pub alliance: String,
    pub zone: String,
    pub locale: Locale,
    pub level: Level,
    pub enrolment: u32,
    pub teachers_total: u32,
    pub teachers_qualified: u32,
    pub key_teachers: u32,
    pub pe_art_teachers: u32,
    pub senior_title_teachers: u32,
    pub floor_area_m2: f64,
    pub sports_area_m2: f64,
    pub equipment_value_yuan: f64,
    pub multimedia_classrooms: u32,
    pub funding_yuan: f64,
    /// The lead school of its alliance ("1" of "1+N").
    pub strong: bool,
}

fn row_error(line: u64, column: &str, value: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Registry { line, column: column.to_string(), value: value.to_string(), message: message.into() }
}

/// Builds and checks one school from its fields (as strings), as read from CSV or Parquet.
/// `line` is the 1-based line (CSV) or row (Parquet, header = line 1) for error messages.
pub fn school_from_fields(line: u64, get: impl Fn(usize) -> String) -> Result<School, SchemaError> {
    let field = |i: usize| get(i);
    let text = |i: usize| -> Result<String, SchemaError> {
        let v = field(i);
        if v.trim().is_empty() {
            return Err(row_error(line, REGISTRY_COLUMNS[i], &v, "must not be empty"));
        }
        Ok(v.trim().to_string())
    };
    let id = |i: usize| -> Result<String, SchemaError> {
        let v = text(i)?;
        check_id(REGISTRY_COLUMNS[i], &v).map_err(|e| row_error(line, REGISTRY_COLUMNS[i], &v, e.to_string()))?;
        Ok(v)
    };
    let count = |i: usize| -> Result<u32, SchemaError> {
        let v = text(i)?;
        v.parse::<u32>().map_err(|_| row_error(line, REGISTRY_COLUMNS[i], &v, "must be a whole number >= 0"))
    };
    let amount = |i: usize| -> Result<f64, SchemaError> {
        let v = text(i)?;
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(row_error(line, REGISTRY_COLUMNS[i], &v, "must be a number >= 0")),
        }
    };
    let locale_s = text(6)?;
    let locale = Locale::parse(&locale_s).ok_or_else(|| row_error(line, "locale", &locale_s, "must be urban, town or rural"))?;
    let level_s = text(7)?;
    let level = Level::parse(&level_s).ok_or_else(|| row_error(line, "level", &level_s, "must be primary or junior"))?;
    let strong_s = text(19)?;
    let strong = match strong_s.to_ascii_lowercase().as_str() {
        "true" | "1" => true,
        "false" | "0" => false,
        _ => return Err(row_error(line, "strong", &strong_s, "must be true or false")),
    };
    let school = School {
        school_id: id(0)?,
        school_name: text(1)?,
        city: id(2)?,
        county: id(3)?,
        alliance: id(4)?,
        zone: id(5)?,
        locale,
        level,
        enrolment: count(8)?,
        teachers_total: count(9)?,
        teachers_qualified: count(10)?,
        key_teachers: count(11)?,
        pe_art_teachers: count(12)?,
        senior_title_teachers: count(13)?,
        floor_area_m2: amount(14)?,
        sports_area_m2: amount(15)?,
        equipment_value_yuan: amount(16)?,
        multimedia_classrooms: count(17)?,
        funding_yuan: amount(18)?,
        strong,
    };
    if school.enrolment == 0 {
        return Err(row_error(line, "enrolment", "0", "must be > 0: per-pupil indicators divide by it"));
    }
    for (col, v) in [
        ("teachers_qualified", school.teachers_qualified),
        ("key_teachers", school.key_teachers),
        ("pe_art_teachers", school.pe_art_teachers),
        ("senior_title_teachers", school.senior_title_teachers),
    ] {
        if v > school.teachers_total {
            return Err(row_error(line, col, &v.to_string(), format!("exceeds teachers_total {}", school.teachers_total)));
        }
    }
    Ok(school)
}

/// Reads a registry CSV.
pub fn read_csv(reader: impl Read) -> Result<Vec<School>, SchemaError> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(reader);
    let headers = rdr.headers().map_err(|e| row_error(1, "$header", "", e.to_string()))?.clone();
    let got: Vec<&str> = headers.iter().collect();
    if got != REGISTRY_COLUMNS {
        let first_diff = REGISTRY_COLUMNS
            .iter()
            .enumerate()
            .find(|(i, c)| got.get(*i) != Some(c))
            .map(|(i, c)| format!("column {} should be {c:?} but is {:?}", i + 1, got.get(i).copied().unwrap_or("<missing>")))
            .unwrap_or_else(|| format!("{} extra column(s)", got.len() - REGISTRY_COLUMNS.len()));
        return Err(row_error(
            1,
            "$header",
            &got.join(","),
            format!("header must be exactly {}: {first_diff}", REGISTRY_COLUMNS.join(",")),
        ));
    }
    let mut schools = Vec::new();
    for record in rdr.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            row_error(line, "$row", "", e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        schools.push(school_from_fields(line, |i| record.get(i).unwrap_or_default().to_string())?);
    }
    check_unique(&schools)?;
    Ok(schools)
}

/// Reads a registry CSV file.
pub fn read_csv_file(path: &Path) -> Result<Vec<School>, SchemaError> {
    let file = std::fs::File::open(path).map_err(|e| SchemaError::Io { path: path.display().to_string(), source: e })?;
    read_csv(std::io::BufReader::new(file))
}

/// A school appears at most once per level.
pub fn check_unique(schools: &[School]) -> Result<(), SchemaError> {
    let mut seen = HashSet::new();
    for (i, s) in schools.iter().enumerate() {
        if !seen.insert((s.school_id.as_str(), s.level)) {
            return Err(row_error(i as u64 + 2, "school_id", &s.school_id, format!("duplicate row for level {}", s.level.as_str())));
        }
    }
    Ok(())
}

/// Writes a registry CSV with the standard header.
pub fn write_csv(schools: &[School], writer: impl Write) -> Result<(), SchemaError> {
    let mut w = csv::Writer::from_writer(writer);
    let io = |e: csv::Error| SchemaError::Io { path: "<registry csv>".into(), source: std::io::Error::other(e) };
    w.write_record(REGISTRY_COLUMNS).map_err(io)?;
    for s in schools {
        w.write_record([
            s.school_id.clone(),
            s.school_name.clone(),
            s.city.clone(),
            s.county.clone(),
            s.alliance.clone(),
            s.zone.clone(),
            s.locale.as_str().into(),
            s.level.as_str().into(),
            s.enrolment.to_string(),
            s.teachers_total.to_string(),
            s.teachers_qualified.to_string(),
            s.key_teachers.to_string(),
            s.pe_art_teachers.to_string(),
            s.senior_title_teachers.to_string(),
            s.floor_area_m2.to_string(),
            s.sports_area_m2.to_string(),
            s.equipment_value_yuan.to_string(),
            s.multimedia_classrooms.to_string(),
            s.funding_yuan.to_string(),
            s.strong.to_string(),
        ])
        .map_err(io)?;
    }
    w.flush().map_err(|e| SchemaError::Io { path: "<registry csv>".into(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "school_id,school_name,city,county,alliance,zone,locale,level,enrolment,teachers_total,teachers_qualified,key_teachers,pe_art_teachers,senior_title_teachers,floor_area_m2,sports_area_m2,equipment_value_yuan,multimedia_classrooms,funding_yuan,strong";

    #[test]
    fn reads_a_through_school_as_two_rows_and_round_trips() {
        let csv = format!(
            "{HEADER}\ns1,一中,c01,k1,a1,z1,urban,primary,800,50,48,6,5,16,6000,8000,2400000,20,9600000,true\n\
             s1,一中,c01,k1,a1,z1,urban,junior,600,45,44,5,4,15,5000,7000,2000000,15,8000000,true\n"
        );
        let schools = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(schools.len(), 2);
        assert_eq!(schools[1].level, Level::Junior);
        let mut out = Vec::new();
        write_csv(&schools, &mut out).unwrap();
        assert_eq!(read_csv(out.as_slice()).unwrap(), schools);
    }

    #[test]
    fn errors_name_line_and_column() {
        let csv = format!(
            "{HEADER}\ns1,一中,c01,k1,a1,z1,urban,primary,800,50,48,6,5,16,6000,8000,2400000,20,9600000,true\n\
             s2,二小,c01,k1,a1,z1,suburb,primary,300,20,18,1,2,3,2000,3000,500000,6,2000000,false\n"
        );
        let err = read_csv(csv.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("locale") && err.contains("suburb"), "{err}");

        let csv = format!("{HEADER}\ns1,一中,c01,k1,a1,z1,urban,primary,many,50,48,6,5,16,6000,8000,2400000,20,9600000,true\n");
        let err = read_csv(csv.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("enrolment"), "{err}");

        let csv = format!("{HEADER}\ns1,一中,c01,k1,a1,z1,urban,primary,800,50,60,6,5,16,6000,8000,2400000,20,9600000,true\n");
        let err = read_csv(csv.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("teachers_qualified") && err.contains("exceeds"), "{err}");

        let err = read_csv("school_id,name\n".as_bytes()).unwrap_err().to_string();
        assert!(err.contains("column 2 should be \"school_name\""), "{err}");
    }

    #[test]
    fn duplicate_school_level_is_an_error() {
        let row = "s1,一中,c01,k1,a1,z1,urban,primary,800,50,48,6,5,16,6000,8000,2400000,20,9600000,true";
        let csv = format!("{HEADER}\n{row}\n{row}\n");
        let err = read_csv(csv.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("duplicate"), "{err}");
    }
}
