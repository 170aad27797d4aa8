"""The warehouse benchmark's baseline: the analytics suite's SQL, as DataFusion ran it, replayed
with DuckDB on the same Parquet files, plus a pyarrow read of them.

Usage: duckdb_suite.py WAREHOUSE_DIR REGISTRY_CSV QUERIES_JSON REPEATS
QUERIES_JSON: [[sql, rows_in_datafusion], ...]. Prints one JSON object: the suite's wall time per
repeat, per-query times of the fastest repeat, row counts that differ from DataFusion's, and the
row counts pyarrow and DuckDB read.
"""

import json
import sys
import time

import duckdb
import pyarrow.dataset as ds

warehouse, registry, queries_path, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
queries = json.load(open(queries_path))
files = f"{warehouse}/events/*/*/*.parquet"
presence = f"{warehouse}/presence/*/*/*.parquet"

con = duckdb.connect()
con.execute("SET threads TO 2")
# The same tables DataFusion has: hive columns as text (as DataFusion declares them), one
# registry version applying to every date.
con.execute(
    f"""CREATE VIEW events AS SELECT *, '0000-01-01' AS registry_from
        FROM read_parquet('{files}', hive_partitioning = true, hive_types_autocast = false)"""
)
con.execute(
    f"""CREATE VIEW presence AS SELECT *, '0000-01-01' AS registry_from
        FROM read_parquet('{presence}', hive_partitioning = true, hive_types_autocast = false)"""
)
con.execute(
    f"""CREATE TABLE schools AS SELECT *, CAST(NULL AS VARCHAR) AS school_year, '0000-01-01' AS registry_from
        FROM read_csv('{registry}', header = true, auto_detect = true)"""
)
con.execute(
    """CREATE VIEW school_dim AS SELECT school_id, registry_from, MIN(school_year) AS school_year,
            MIN(school_name) AS school_name, MIN(city) AS city, MIN(county) AS county,
            MIN(alliance) AS alliance, MIN(zone) AS zone, MIN(locale) AS locale,
            BOOL_OR(strong) AS strong, SUM(enrolment) AS enrolment
       FROM schools GROUP BY school_id, registry_from"""
)

runs = []
best = None
mismatches = []
for r in range(repeats):
    times = []
    start = time.perf_counter()
    for i, (sql, rows) in enumerate(queries):
        t = time.perf_counter()
        got = len(con.execute(sql).fetchall())
        times.append(time.perf_counter() - t)
        if r == 0 and got != rows:
            mismatches.append({"query": i, "datafusion_rows": rows, "duckdb_rows": got, "sql": sql[:200]})
    total = time.perf_counter() - start
    runs.append(total)
    if best is None or total < sum(best):
        best = times

print(
    json.dumps(
        {
            "runs_s": runs,
            "query_s": best,
            "row_count_mismatches": mismatches,
            "pyarrow_rows": ds.dataset(f"{warehouse}/events", format="parquet", partitioning="hive").count_rows(),
            "duckdb_rows": con.execute("SELECT COUNT(*) FROM events").fetchone()[0],
        }
    )
)
