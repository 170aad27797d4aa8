"""A BI tool's view of the warehouse: ADBC's Flight SQL driver (PyPI adbc-driver-flightsql).

Reads a JSON list of cases on stdin and prints one JSON answer per case on stdout. Each case:
  {"uri": ..., "auth": {"bearer": token} | {"user": name, "password": token},
   "op": "query" | "prepared" | "objects" | "info" | "table_schema" | "slow_read", "sql": ..., "table": ...}
"slow_read" reads the first batch, says so on stderr ("first batch read"), waits "pause" seconds, then
reads the rest: a client that stops reading mid-stream.
An answer is {"ok": true, ...} with what the op returned, or {"ok": false, "error": message};
each also has "seconds", how long the case took.
cloud/tests/flight_sql.rs makes the cases and checks the answers.
"""

import json
import sys
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql


def connect(case):
    auth = case["auth"]
    if "bearer" in auth:
        kwargs = {adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + auth["bearer"]}
    else:
        kwargs = {"username": auth["user"], "password": auth["password"]}
    return flight_sql.connect(uri=case["uri"], db_kwargs=kwargs)


def schema_of(schema):
    return [[f.name, str(f.type)] for f in schema]


def run(case):
    with connect(case) as conn:
        op = case["op"]
        if op in ("query", "prepared"):
            with conn.cursor() as cur:
                if op == "prepared":
                    cur.adbc_prepare(case["sql"])
                cur.execute(case["sql"])
                table = cur.fetch_arrow_table()
                return {"schema": schema_of(table.schema), "rows": table.to_pylist()}
        if op == "slow_read":
            with conn.cursor() as cur:
                cur.execute(case["sql"])
                reader = cur.fetch_record_batch()
                rows, batches = reader.read_next_batch().num_rows, 1
                sys.stderr.write("first batch read\n")
                sys.stderr.flush()
                time.sleep(case["pause"])
                for batch in reader:
                    rows, batches = rows + batch.num_rows, batches + 1
                return {"rows": rows, "batches": batches}
        if op == "objects":
            objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            tables = []
            for catalog in objects:
                for schema in catalog["catalog_db_schemas"] or []:
                    for table in schema["db_schema_tables"] or []:
                        tables.append([catalog["catalog_name"], schema["db_schema_name"], table["table_name"], table["table_type"]])
            return {"tables": tables}
        if op == "info":
            return {"info": {k: v for k, v in conn.adbc_get_info().items() if isinstance(v, (str, int, bool))}}
        if op == "table_schema":
            return {"schema": schema_of(conn.adbc_get_table_schema(case["table"]))}
        raise ValueError("unknown op " + op)


answers = []
for case in json.load(sys.stdin):
    started = time.monotonic()
    try:
        answer = {"ok": True, **run(case)}
    except Exception as e:  # the test asserts on the driver's message
        answer = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    answer["seconds"] = time.monotonic() - started
    answers.append(answer)
print(json.dumps(answers, default=str))
