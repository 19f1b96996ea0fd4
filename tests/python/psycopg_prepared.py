"""psycopg 3 through pgmux in transaction mode: server-side prepared statements
(named _pg3_0, _pg3_1, ... per connection) reused across transactions by many
threads that share a small server pool.

    python psycopg_prepared.py URL CLIENTS

Even-numbered clients prepare everything (prepare_threshold=0), odd-numbered ones
use the default threshold; every third client keeps only 4 prepared statements, so
psycopg closes the oldest. Statement texts hold a client-specific constant, so a
statement run for the wrong client gives a wrong answer. Each client also drops a
table inside a transaction, after which psycopg sends DEALLOCATE ALL while the
transaction is still open, and uses pipeline mode. Each client inserts 10 rows into
psycopg_prepared(client, i). Prints "psycopg ok" and exits 0 when every answer was
right.
"""

import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg

ROUNDS = 30


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def one(conn, sql, params):
    row = conn.execute(sql, params).fetchone()
    return row[0]


def client(url, n):
    kwargs = {"autocommit": True}
    if n % 2 == 0:
        kwargs["prepare_threshold"] = 0
    with psycopg.connect(url, **kwargs) as conn:
        if n % 3 == 0:
            conn.prepared_max = 4
        base = n * 1000
        for i in range(ROUNDS):
            check(one(conn, f"select %s::int + {base}", (i,)), i + base, f"client {n} add")
            check(
                one(conn, f"select %s::text || '-client-{n}'", (str(i),)),
                f"{i}-client-{n}",
                f"client {n} text",
            )
            check(one(conn, "select %s::int * 2", (i,)), 2 * i, f"client {n} shared")
            for k in range(3):
                # More distinct texts than prepared_max for some clients.
                check(
                    one(conn, f"select %s::int + {base} + {k}", (i,)),
                    i + base + k,
                    f"client {n} extra {k}",
                )
            if i % 3 == 0:
                with conn.transaction():
                    check(
                        one(conn, f"select %s::int + {base}", (i,)),
                        i + base,
                        f"client {n} add in a transaction",
                    )
                    conn.execute(
                        "insert into psycopg_prepared (client, i) values (%s, %s)", (n, i)
                    )
                    check(
                        one(conn, "select %s::int * 2", (i,)),
                        2 * i,
                        f"client {n} shared in a transaction",
                    )
            if i == 10:
                with conn.transaction():
                    conn.execute(f"drop table if exists psycopg_scratch_{n}")
                    check(
                        one(conn, "select %s::int * 2", (i,)),
                        2 * i,
                        f"client {n} shared after a DROP",
                    )
            if i % 10 == 5:
                try:
                    with conn.transaction():
                        one(conn, "select 1 / %s::int", (0,))
                    raise AssertionError("division by zero did not fail")
                except psycopg.errors.DivisionByZero:
                    pass
                with conn.pipeline():
                    curs = []
                    for k in range(5):
                        cur = conn.cursor()
                        cur.execute(f"select %s::int + {base}", (k,))
                        curs.append((k, cur))
                    for k, cur in curs:
                        check(cur.fetchone()[0], k + base, f"client {n} pipelined {k}")


def main(url, clients):
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for f in [pool.submit(client, url, n) for n in range(clients)]:
            f.result()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    print("psycopg ok")
