// Times one SmartNoise-SQL query through this client, for bench/client_latency.py (which runs the
// same loop through the Python and Go clients):
//
//   node clients/typescript/dist/bench.js LOOP.json
//
// LOOP.json: target, token, dataset, sql, epsilon, delta, runs. After a call that opens the
// connection, it times the first query (charged), `runs` repeats of it (free replays of that
// release) and `runs` repeats with `fresh: true` (each a new, charged draw), and prints the
// milliseconds as JSON with how many answers were replays.

import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { createNodeTransport, LomasClient } from "./index.js";

interface Loop {
  target: string;
  token: string;
  dataset: string;
  sql: string;
  epsilon: string;
  delta: string;
  runs: number;
}

async function run(spec: Loop) {
  const transport = createNodeTransport(spec.target);
  const client = new LomasClient({ transport, dataset: spec.dataset, token: spec.token });
  await client.listDatasets(); // opens the connection, untimed

  // One query, timed in milliseconds; whether the answer was a replay.
  const query = async (fresh: boolean): Promise<[number, boolean]> => {
    const started = performance.now();
    const release = await client.smartnoiseSql.query(spec.sql, spec.epsilon, spec.delta, { fresh });
    return [performance.now() - started, release.replay];
  };
  const [first] = await query(false);
  const replayMs: number[] = [];
  const freshMs: number[] = [];
  const out = {
    first_ms: first,
    replay_ms: replayMs,
    fresh_ms: freshMs,
    replays: 0,
    fresh_replays: 0,
  };
  for (let i = 0; i < spec.runs; i++) {
    const [elapsed, replay] = await query(false);
    replayMs.push(elapsed);
    out.replays += Number(replay);
  }
  for (let i = 0; i < spec.runs; i++) {
    const [elapsed, replay] = await query(true);
    freshMs.push(elapsed);
    out.fresh_replays += Number(replay);
  }
  return out;
}

async function main(argv: string[]): Promise<number> {
  if (argv.length !== 1 || argv[0] === undefined) {
    process.stderr.write("usage: node clients/typescript/dist/bench.js LOOP.json\n");
    return 2;
  }
  const spec = JSON.parse(readFileSync(argv[0], "utf8")) as Loop;
  process.stdout.write(JSON.stringify(await run(spec)) + "\n");
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const reason = error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`bench failed: ${reason}\n`);
    process.exitCode = 1;
  },
);
