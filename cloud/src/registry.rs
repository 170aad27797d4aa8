//! Loads the school registry (CSV or Parquet with the standard columns) and turns it into the
//! `schools` table.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use edubrain_schemas::School;
use edubrain_schemas::registry::{REGISTRY_COLUMNS, check_unique, school_from_fields};
use edubrain_schemas::warehouse::registry_schema;

use crate::CloudError;

/// Reads a registry file; `.parquet` files are read as Parquet, anything else as CSV.
pub fn load(path: &Path) -> Result<Vec<School>, CloudError> {
    if path.extension().is_some_and(|e| e == "parquet") { load_parquet(path) } else { Ok(edubrain_schemas::registry::read_csv_file(path)?) }
}

fn load_parquet(path: &Path) -> Result<Vec<School>, CloudError> {
    let err = |message: String| CloudError::Parquet { path: path.display().to_string(), message };
    let file = std::fs::File::open(path).map_err(|e| CloudError::Io { path: path.display().to_string(), source: e })?;
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
}
