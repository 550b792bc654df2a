// The browser entry point (`@lomas/client/web`, gRPC-web) against a live platform behind Envoy,
// run from Node.js (its fetch is the browser's): tests/e2e/test_envoy_grpc_web.py starts Envoy
// from the Kubernetes sidecar configuration and holds the expectations.
//
//   node clients/typescript/dist/web-check.js ENV.json
//
// ENV.json: url (Envoy's listener, "http://127.0.0.1:PORT"), dataset, token, invalid_token, sql,
// job_sql, epsilon, delta, exhausting_epsilon, invalid_sql. Prints what it saw as JSON.

import { readFileSync } from "node:fs";
import { createWebTransport, LomasClient, LomasError } from "./web.js";

interface Environment {
  url: string;
  dataset: string;
  token: string;
  invalid_token: string;
  sql: string;
  job_sql: string;
  epsilon: string;
  delta: string;
  exhausting_epsilon: string;
  invalid_sql: string;
}

async function refusal(call: () => Promise<unknown>) {
  try {
    await call();
  } catch (error) {
    if (error instanceof LomasError) {
      const { name, code, reason, message, metadata } = error;
      return { error: name, code, reason, message, metadata };
    }
    throw error;
  }
  throw new Error("a call the check expects to be refused succeeded");
}

async function budget(client: LomasClient): Promise<Record<string, string>> {
  return { ...(await client.getTotalSpentBudget()), ...(await client.getRemainingBudget()) };
}

async function observe(env: Environment) {
  const { dataset, epsilon, delta } = env;
  const transport = createWebTransport(env.url);
  const client = new LomasClient({ transport, dataset, token: env.token });
  const intruder = new LomasClient({ transport, dataset, token: env.invalid_token });

  const datasets = await client.listDatasets();
  const budgetBefore = await budget(client);
  const cost = await client.smartnoiseSql.cost(env.sql, epsilon, delta);
  const release = await client.smartnoiseSql.query(env.sql, epsilon, delta);
  const budgetAfter = await budget(client);
  // A server stream through gRPC-web too: a job followed to its release.
  const job = await client.smartnoiseSql.submit(env.job_sql, epsilon, delta);
  const states: string[] = [];
  let jobCost = null;
  for await (const event of job.watch({ timeoutMs: 120_000 })) {
    states.push(event.state);
    jobCost = event.release?.cost ?? jobCost;
  }
  return {
    datasets,
    budget_before: budgetBefore,
    cost,
    release: {
      columns: release.table.schema.fields.map((field) => field.name),
      rows: release.table.numRows,
      cost: release.cost,
    },
    budget_after: budgetAfter,
    job: { states, cost: jobCost },
    refusals: {
      budget_exhausted: await refusal(() =>
        client.smartnoiseSql.query(env.sql, env.exhausting_epsilon, delta),
      ),
      invalid_sql: await refusal(() => client.smartnoiseSql.cost(env.invalid_sql, epsilon, delta)),
      invalid_token: await refusal(() =>
        intruder.smartnoiseSql.query(env.sql, epsilon, delta, { fresh: true }),
      ),
    },
    budget_end: await budget(client),
  };
}

async function main(argv: string[]): Promise<number> {
  if (argv.length !== 1 || argv[0] === undefined) {
    process.stderr.write("usage: node clients/typescript/dist/web-check.js ENV.json\n");
    return 2;
  }
  const env = JSON.parse(readFileSync(argv[0], "utf8")) as Environment;
  process.stdout.write(JSON.stringify(await observe(env), null, 2) + "\n");
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const reason = error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`web check failed: ${reason}\n`);
    process.exitCode = 1;
  },
);
