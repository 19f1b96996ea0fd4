// node-postgres through pgmux: 20 clients on 2 server connections, named prepared
// statements reused across transactions, and a transaction block.
// Usage: node pg_pool.js CONNECTION_STRING. Exits non-zero on any wrong result.
const { Client } = require('pg');

const url = process.argv[2];
const CLIENTS = 20;
const ROUNDS = 30;

async function run(n) {
  const client = new Client({ connectionString: url });
  await client.connect();
  for (let i = 0; i < ROUNDS; i++) {
    const r = await client.query({ name: 'add', text: 'select $1::int + $2::int as v', values: [i, n] });
    if (r.rows[0].v !== i + n) throw new Error(`client ${n} round ${i}: got ${r.rows[0].v}`);
  }
  await client.query('begin');
  const inTx = await client.query({ name: 'add', text: 'select $1::int + $2::int as v', values: [1000, n] });
  await client.query('commit');
  if (inTx.rows[0].v !== 1000 + n) throw new Error(`client ${n}: transaction got ${inTx.rows[0].v}`);
  await client.end();
}

Promise.all(Array.from({ length: CLIENTS }, (_, n) => run(n)))
  .then(() => console.log('ok'))
  .catch((e) => { console.error(e); process.exit(1); });
