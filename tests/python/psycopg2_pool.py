"""psycopg2 through pgmux: 20 threads on 2 server connections, transactions, a SET
that must follow its connection, and a named (server-side) cursor.

Usage: psycopg2_pool.py DSN. Exits non-zero on any wrong result."""
import sys
import threading

import psycopg2

DSN = sys.argv[1]
CLIENTS = 20
ROUNDS = 30
errors = []


def client(n):
    try:
        conn = psycopg2.connect(DSN)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SET application_name = %s", (f"psycopg2-{n}",))
        for i in range(ROUNDS):
            cur.execute("SELECT %s::int + %s::int, current_setting('application_name')", (i, n))
            total, app = cur.fetchone()
            if total != i + n or app != f"psycopg2-{n}":
                errors.append(f"client {n} round {i}: got {total} {app}")
        conn.autocommit = False
        with conn:
            with conn.cursor(name=f"walk_{n}") as named:
                named.execute("SELECT g FROM generate_series(1, 50) g")
                rows = named.fetchmany(20) + named.fetchall()
                if [r[0] for r in rows] != list(range(1, 51)):
                    errors.append(f"client {n}: named cursor returned {len(rows)} rows")
        conn.close()
    except Exception as e:  # noqa: BLE001 - report every failure
        errors.append(f"client {n}: {e!r}")


threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("ok")
