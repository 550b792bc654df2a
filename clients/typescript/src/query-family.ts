// What the query families outside the client (DiffPrivLib, SmartNoise-Synth) share, as the Python
// client's `lomas.client.family`: what a family needs of the client (`QueryRunner`: price, run and
// submit the queries it builds) and how its optional decimal parameters travel.

import type { PrivacyLossValues, QueryInit, Release, RunOptions, SubmitOptions } from "./client.js";
import { decimalText, type DecimalText } from "./decimal.js";
import type { QueryJob } from "./jobs.js";

/** What a query family needs of `LomasClient`, which builds it. */
export interface QueryRunner {
  estimate(query: QueryInit): Promise<PrivacyLossValues>;
  execute(query: QueryInit, run?: RunOptions): Promise<Release>;
  submit(query: QueryInit, options?: SubmitOptions): Promise<QueryJob>;
}

/** An optional decimal parameter as sent: its exact text, or "" (the platform's default) when it
 * is not given. */
export function optionalDecimalText(value: DecimalText | undefined, name: string): string {
  return value === undefined ? "" : decimalText(value, name);
}
