// The shared researcher scenario (clients/SCENARIO.md), played with this client's public API.
//
// `node clients/typescript/dist/scenario.js ENV.json` prints the observation as JSON. The Python
// and Go clients run the same steps; tests/e2e/test_client_parity.py compares the observations.

import { readFileSync } from "node:fs";
import type { Transport } from "@connectrpc/connect";
import type { Table } from "apache-arrow";
import {
  createNodeTransport,
  LomasError,
  LomasClient,
  pythonDecimalString,
  type PrivacyLossValues,
} from "./index.js";

interface Environment {
  target: string;
  token: string;
  invalid_token: string;
  dataset: string;
  unknown_dataset: string;
  forbidden_dataset: string;
  sql: string;
  epsilon: string;
  delta: string;
  exhausting_epsilon: string;
  invalid_sql: string;
  dummy_rows: number;
  dummy_seed: number;
}

type Loss = { epsilon: string; delta: string };

// Losses as the Python runner prints them (str of a Decimal): equal to the gateway's strings except
// below a millionth, where Python writes an exponent.
function loss(values: PrivacyLossValues): Loss {
  if (!("epsilon" in values)) {
    throw new Error(`the scenario expects (epsilon, delta) losses, got ${JSON.stringify(values)}`);
  }
  return { epsilon: pythonDecimalString(values.epsilon), delta: pythonDecimalString(values.delta) };
}

// A budget without its prefixes: `initial_epsilon` becomes `epsilon`.
function unprefixed(values: object, prefix: string): PrivacyLossValues {
  const entries = Object.entries(values)
    .filter(([key]) => key.startsWith(prefix))
    .map(([key, value]) => [key.slice(prefix.length), value]);
  return Object.fromEntries(entries) as PrivacyLossValues;
}

async function budget(client: LomasClient): Promise<Record<string, Loss>> {
  return {
    initial: loss(unprefixed(await client.getInitialBudget(), "initial_")),
    spent: loss(unprefixed(await client.getTotalSpentBudget(), "total_spent_")),
    remaining: loss(unprefixed(await client.getRemainingBudget(), "remaining_")),
  };
}

async function refusal(call: () => Promise<unknown>): Promise<{ code: string; reason: string }> {
  try {
    await call();
  } catch (error) {
    if (error instanceof LomasError) {
      return { code: error.code, reason: error.reason };
    }
    throw error;
  }
  throw new Error("a call the scenario expects to be refused succeeded");
}

function columns(table: Table): string[] {
  return table.schema.fields.map((field) => field.name);
}

/** Play the scenario's steps in order and return what was seen. */
export async function observe(env: Environment): Promise<Record<string, unknown>> {
  const { dataset, sql, epsilon, delta } = env;
  const transport: Transport = createNodeTransport(env.target);
  const client = new LomasClient({ transport, dataset, token: env.token });
  const other = (name: string, token: string) =>
    new LomasClient({ transport, dataset: name, token });

  const datasets = (await client.listDatasets()).sort();
  const metadata = await client.getDatasetMetadata();
  const dummy = await client.getDummyDataset(env.dummy_rows, env.dummy_seed);
  const observation: Record<string, unknown> = {
    datasets,
    metadata: { max_ids: metadata.max_ids, columns: Object.keys(metadata.columns).sort() },
    dummy: { rows: dummy.numRows, columns: columns(dummy) },
    cost: loss(await client.smartnoiseSql.cost(sql, epsilon, delta)),
    budget_before: await budget(client),
  };
  const release = await client.smartnoiseSql.query(sql, epsilon, delta);
  observation.query = {
    columns: columns(release.table),
    rows: release.table.numRows,
    cost: loss(release.cost),
  };
  observation.budget_after = await budget(client);
  const previous = await client.getPreviousQueries();
  observation.previous_queries = {
    count: previous.length,
    costs: previous.map((q) => loss(q.cost)),
  };
  observation.refusals = {
    unknown_dataset: await refusal(() =>
      other(env.unknown_dataset, env.token).getDatasetMetadata(),
    ),
    no_access: await refusal(() => other(env.forbidden_dataset, env.token).getDatasetMetadata()),
    budget_exhausted: await refusal(() =>
      client.smartnoiseSql.query(sql, env.exhausting_epsilon, delta),
    ),
    invalid_sql: await refusal(() => client.smartnoiseSql.cost(env.invalid_sql, epsilon, delta)),
    invalid_token: await refusal(() => other(dataset, env.invalid_token).getRemainingBudget()),
  };
  return observation;
}

// JSON with sorted keys, as the Python runner prints it, so the two outputs also diff cleanly.
function sortedKeys(value: unknown): unknown {
  if (Array.isArray(value)) {
    return value.map(sortedKeys);
  }
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((key) => [key, sortedKeys((value as Record<string, unknown>)[key])]),
    );
  }
  return value;
}

async function main(argv: string[]): Promise<number> {
  if (argv.length !== 1 || argv[0] === undefined) {
    process.stderr.write("usage: node clients/typescript/dist/scenario.js ENV.json\n");
    return 2;
  }
  const env = JSON.parse(readFileSync(argv[0], "utf8")) as Environment;
  process.stdout.write(JSON.stringify(sortedKeys(await observe(env)), null, 2) + "\n");
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const reason = error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`scenario failed: ${reason}\n`);
    process.exitCode = 1;
  },
);
