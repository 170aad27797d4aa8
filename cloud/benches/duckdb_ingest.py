"""The warehouse benchmark's ingest baseline: DuckDB turning the same JSON events the cloud
ingests into a zstd Parquet file, on one thread, counted in CPU seconds as the Rust ingest is.

Usage: duckdb_ingest.py EVENTS_NDJSON OUT_PARQUET
The columns are found first (untimed, from the whole file) and given to the timed read, so the
baseline parses the file once, as a hand-written pipeline that knows its schema would. The
timed part is the read, the Parquet write and an fsync of the file. It does less than the
cloud's ingest: no validation, no partitioning by date and city, one file. Prints one JSON
object: events, cpu_s, wall_s, bytes.
"""

import json
import os
import sys
import time

import duckdb

src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads TO 1")
described = con.execute(f"DESCRIBE SELECT * FROM read_ndjson('{src}', sample_size = -1)").fetchall()
columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind, *_ in described) + "}"

cpu, wall = time.process_time(), time.perf_counter()
con.execute(f"COPY (SELECT * FROM read_ndjson('{src}', columns = {columns})) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
fd = os.open(out, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

events = con.execute(f"SELECT COUNT(*) FROM read_parquet('{out}')").fetchone()[0]
print(json.dumps({"events": events, "cpu_s": cpu, "wall_s": wall, "bytes": os.path.getsize(out)}))
