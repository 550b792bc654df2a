// Jobs against a live platform, in two phases that tests/e2e/test_typescript_jobs.py runs around
// the start of the platform's first worker:
//
//   node clients/typescript/dist/jobs-check.js queue ENV.json    (no worker yet: queries wait)
//   node clients/typescript/dist/jobs-check.js collect ENV.json  (a worker runs them)
//
// Each phase prints what it saw as JSON; the test holds the expectations. `queue` submits the
// SmartNoise-SQL queries and the OpenDP measurement of ENV, reads their places in the queue,
// tries another user's query id and cancels the second query; `collect` follows the rest to their
// releases with `for await`, then tries to cancel too late. ENV.json: target, dataset, token,
// other_token, sqls, epsilon, delta, measurement_json, and for `collect` the `ids` printed by
// `queue`.

import { readFileSync } from "node:fs";
import {
  createNodeTransport,
  describeStatus,
  LomasClient,
  LomasError,
  type QueryJob,
  type QueryStatus,
} from "./index.js";

interface Environment {
  target: string;
  dataset: string;
  token: string;
  other_token: string;
  sqls: string[];
  epsilon: string;
  delta: string;
  measurement_json: string;
  ids?: string[];
}

// How long the collect phase waits for a worker to release a query.
const RELEASE_TIMEOUT_MS = 120_000;

interface Refusal {
  error: string;
  code: string;
  reason: string;
  message: string;
}

async function refusal(call: () => Promise<unknown>): Promise<Refusal> {
  try {
    await call();
  } catch (error) {
    if (error instanceof LomasError) {
      const { name, code, reason, message } = error;
      return { error: name, code, reason, message };
    }
    throw error;
  }
  throw new Error("a call the check expects to be refused succeeded");
}

/** The first event of a job's watch, read with `for await` and left early. */
async function firstEvent(job: QueryJob): Promise<QueryStatus> {
  for await (const event of job.watch()) {
    return { state: event.state, queue_position: event.queue_position };
  }
  throw new Error("the watch ended without an event");
}

async function budget(client: LomasClient): Promise<Record<string, string>> {
  return { ...(await client.getTotalSpentBudget()), ...(await client.getRemainingBudget()) };
}

async function queue(env: Environment, client: LomasClient, other: LomasClient) {
  const { epsilon, delta } = env;
  const [firstSql] = env.sqls;
  if (firstSql === undefined) {
    throw new Error("ENV.sqls names no query");
  }
  const pipeline = { measurementJson: env.measurement_json };
  const costs = {
    sql: await client.smartnoiseSql.cost(firstSql, epsilon, delta),
    opendp: await client.opendp.cost(pipeline),
  };
  const jobs: QueryJob[] = [];
  for (const sql of env.sqls) {
    jobs.push(await client.smartnoiseSql.submit(sql, epsilon, delta));
  }
  jobs.push(await client.opendp.submit(pipeline));
  const queued = [];
  for (const job of jobs) {
    const first = await firstEvent(job);
    queued.push({ ...first, described: describeStatus(await job.status()) });
  }
  const budgetQueued = await budget(client);

  // Another user's query id is refused exactly like an unknown one.
  const [job0, job1, job2, job3] = jobs as [QueryJob, QueryJob, QueryJob, QueryJob];
  const notFound = {
    others_status: await refusal(() => other.job(job0.queryId).status()),
    others_cancel: await refusal(() => other.job(job0.queryId).cancel()),
    unknown_status: await refusal(() => other.job("no-such-query").status()),
  };
  const untouched = await job0.status();

  const refunded = await job1.cancel();
  const refundedAgain = await job1.cancel();
  return {
    ids: jobs.map((job) => job.queryId),
    costs,
    queued,
    budget_queued: budgetQueued,
    not_found: notFound,
    untouched,
    refunded,
    refunded_again: refundedAgain,
    budget_cancelled: await budget(client),
    cancelled_result: await refusal(() => job1.result({ timeoutMs: 30_000 })),
    after_cancel: [await job2.status(), await job3.status()],
  };
}

async function collect(env: Environment, client: LomasClient) {
  const [id0, id1, id2, id3] = (env.ids ?? []) as [string, string, string, string];
  if (id3 === undefined) {
    throw new Error("collect needs the four ids that queue printed");
  }
  const followed = [];
  for (const queryId of [id0, id2, id3]) {
    const states: string[] = [];
    let release = null;
    for await (const event of client.job(queryId).watch({ timeoutMs: RELEASE_TIMEOUT_MS })) {
      states.push(event.state);
      if (event.release !== null) {
        const { table, query_id, cost, replay } = event.release;
        const columns = table.schema.fields.map((field) => field.name);
        release = { query_id, cost, replay, columns, rows: table.numRows };
      }
    }
    followed.push({ query_id: queryId, states, release });
  }
  const result = await client.job(id0).result({ timeoutMs: RELEASE_TIMEOUT_MS });
  return {
    followed,
    result: { query_id: result.query_id, cost: result.cost, rows: result.table.numRows },
    too_late: await refusal(() => client.job(id0).cancel()),
    cancelled_status: await refusal(() => client.job(id1).status()),
    budget: await budget(client),
  };
}

async function main(argv: string[]): Promise<number> {
  const [phase, envPath] = argv;
  if (argv.length !== 2 || envPath === undefined || !(phase === "queue" || phase === "collect")) {
    process.stderr.write("usage: node clients/typescript/dist/jobs-check.js queue|collect ENV\n");
    return 2;
  }
  const env = JSON.parse(readFileSync(envPath, "utf8")) as Environment;
  const transport = createNodeTransport(env.target);
  const client = new LomasClient({ transport, dataset: env.dataset, token: env.token });
  const other = new LomasClient({ transport, dataset: env.dataset, token: env.other_token });
  const seen = phase === "queue" ? await queue(env, client, other) : await collect(env, client);
  process.stdout.write(JSON.stringify(seen, null, 2) + "\n");
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const reason = error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`jobs check failed: ${reason}\n`);
    process.exitCode = 1;
  },
);
