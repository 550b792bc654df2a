// The researcher's client: the Python client's vocabulary (lomas.client.Client), Arrow tables out,
// exact decimal strings for every privacy loss, typed errors.
//
//   const transport = createNodeTransport("localhost:50051");
//   const client = new LomasClient({ transport, dataset: "PENGUIN", token });
//   const release = await client.smartnoiseSql.query("SELECT COUNT(*) AS n FROM df", "1", "1e-5");
//
// It works in Node.js and in browsers alike: only the transport differs (src/node.ts, src/web.ts).

import { toJson, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Transport,
} from "@connectrpc/connect";
import { Table, tableFromIPC } from "apache-arrow";
import { decimalText, type DecimalText } from "./decimal.js";
import { DiffPrivLibClient } from "./diffprivlib.js";
import { SmartnoiseSynthClient } from "./smartnoise-synth.js";
import { fromConnectError, InvalidArgument } from "./errors.js";
import type { PrivacyLoss } from "./gen/lomas/common/v1/privacy_pb.js";
import { OpenDpMechanism, QuerySchema, type Query } from "./gen/lomas/common/v1/query_pb.js";
import {
  GatewayService,
  type ExecuteQueryResponse,
  type PreviousQuery as WirePreviousQuery,
  type WatchQueryResponse,
} from "./gen/lomas/gateway/v1/gateway_pb.js";
import { QueryJob, type WatchOptions } from "./jobs.js";

/** A query as sent: a `lomas.common.v1.Query` message or its plain-object form. */
export type QueryInit = MessageInitShape<typeof QuerySchema>;

/** A privacy loss as exact decimal strings: `{ epsilon, delta }` for approximate and pure DP (where
 * delta is "0"), `{ rho }` for zCDP. Strings as the gateway sent them: never parse them into
 * numbers. */
export type PrivacyLossValues = { epsilon: string; delta: string } | { rho: string };

/** A loss whose keys carry a prefix, as the Python client and Lomas name budgets
 * (`initial_epsilon`, `total_spent_delta`, `remaining_rho`...). */
export type Prefixed<P extends string, T> = T extends unknown
  ? { [K in keyof T & string as `${P}${K}`]: T[K] }
  : never;

export type InitialBudget = Prefixed<"initial_", PrivacyLossValues>;
export type TotalSpentBudget = Prefixed<"total_spent_", PrivacyLossValues>;
/** With a `delta` asked for, `remaining_epsilon_at_delta` and `at_delta` show a zCDP (rho) budget
 * as the epsilon it affords at that delta, rounded down. */
export type RemainingBudget = Prefixed<"remaining_", PrivacyLossValues> & {
  remaining_epsilon_at_delta?: string;
  at_delta?: string;
};

/** A column of the metadata: `type` and, by type, `lower`, `upper`, `nullable`, `categories`... */
export interface ColumnMetadata {
  type: string;
  [key: string]: unknown;
}

/** A dataset's metadata: the document Lomas administrators write in YAML (SmartNoise-SQL form). */
export interface DatasetMetadata {
  max_ids: number;
  rows: number;
  row_privacy: boolean;
  /** Column name to its entry, in the data's column order. */
  columns: Record<string, ColumnMetadata>;
  [key: string]: unknown;
}

/** A DP release: the table and what it cost. */
export interface Release {
  table: Table;
  /** Empty for dummy queries. */
  query_id: string;
  /** What was charged (for dummy queries: what the real query costs). */
  cost: PrivacyLossValues;
  /** A free replay of your earlier release of the same query: nothing was charged. */
  replay: boolean;
}

/** One of your previous real queries, with the keys the Python client uses. */
export interface PreviousQuery {
  query_id: string;
  dataset: string;
  /** "smartnoise_sql" or "opendp". */
  query_kind: string | null;
  /** The query in protobuf's JSON form, with the proto's field names. */
  query: JsonValue;
  cost: PrivacyLossValues;
  /** The release (null if the query failed). */
  result: Table | null;
  /** For a failed query: the error reason. */
  error_reason: string | null;
  submitted_at: Date | null;
}

/** How a query runs: the options every `query` method takes after its own. */
export interface RunOptions {
  /** Run on seeded dummy data instead, free (default false). */
  dummy?: boolean;
  /** Rows of dummy data (default 100, at least 1). */
  nbRows?: number;
  /** Seed of the dummy data (default 42). */
  seed?: number | bigint;
  /** Names this query, so a retry with it returns the first answer and is never charged twice (a
   * new one is made when none is given). */
  requestId?: string;
  /** Pay for a new draw of noise instead of a free replay of your earlier release of the same
   * query (default false). */
  fresh?: boolean;
}

/** How a query is submitted as a job: `requestId` and `fresh`, as for `query`. */
export type SubmitOptions = Pick<RunOptions, "requestId" | "fresh">;

export interface LomasClientOptions {
  /** How calls reach the gateway: `createNodeTransport(target)` in Node.js (gRPC over HTTP/2), or
   * `createWebTransport(url)` in a browser (gRPC-web through Envoy). */
  transport: Transport;
  /** The dataset this client queries, e.g. "PENGUIN". */
  dataset: string;
  /** The bearer token sent with every call. */
  token: string;
  /** Deadline of each call in milliseconds (default 600 000: a query waits for its release). */
  timeoutMs?: number;
}

/** An Arrow IPC stream as an Arrow table (an empty table for no bytes). */
export function tableFromIpcBytes(data: Uint8Array): Table {
  return data.length === 0 ? new Table() : tableFromIPC(data);
}

/** An ExecuteQuery answer (or a watched query's result) as a release. */
export function releaseOf(response: ExecuteQueryResponse): Release {
  return {
    table: tableFromIpcBytes(response.release),
    query_id: response.queryId,
    cost: lossValues(response.cost),
    replay: response.replay,
  };
}

/** A privacy loss as exact decimal strings. */
export function lossValues(loss: PrivacyLoss | undefined): PrivacyLossValues {
  switch (loss?.loss.case) {
    case "approxDp":
      return { epsilon: loss.loss.value.epsilon, delta: loss.loss.value.delta };
    case "pureDp":
      return { epsilon: loss.loss.value.epsilon, delta: "0" };
    case "rhoZcdp":
      return { rho: loss.loss.value.rho };
    default:
      throw new Error("the gateway sent no privacy loss");
  }
}

function prefixed<P extends string>(
  prefix: P,
  loss: PrivacyLossValues,
): Prefixed<P, PrivacyLossValues> {
  const entries = Object.entries(loss).map(([key, value]) => [prefix + key, value]);
  return Object.fromEntries(entries) as Prefixed<P, PrivacyLossValues>;
}

/** `nbRows` as sent: a whole number of at least 1, as Lomas has it. On the wire 0 means "the
 * default", so 0 is refused here, before anything is sent (the gateway refuses the rest). */
function dummyRows(nbRows: number): number {
  if (!Number.isSafeInteger(nbRows) || nbRows < 1 || nbRows > 2 ** 31 - 1) {
    throw new InvalidArgument(
      "INVALID_ARGUMENT",
      "DUMMY_ROWS_OUT_OF_RANGE",
      `nbRows must be a whole number of at least 1 (got ${nbRows})`,
      {},
    );
  }
  return nbRows;
}

/** A researcher's connection to one dataset on a Lomas mesh gateway. */
export class LomasClient {
  readonly dataset: string;
  /** DP SQL with SmartNoise-SQL. */
  readonly smartnoiseSql: SmartnoiseSqlClient;
  /** OpenDP pipelines (a measurement's JSON, or a Polars plan's JSON). */
  readonly opendp: OpenDpClient;
  /** DP machine learning with DiffPrivLib (a declarative pipeline). */
  readonly diffprivlib: DiffPrivLibClient;
  /** DP synthetic data with SmartNoise-Synth (samples, never a model). */
  readonly smartnoiseSynth: SmartnoiseSynthClient;
  private readonly gateway: Client<typeof GatewayService>;
  private readonly callOptions: CallOptions;

  constructor(options: LomasClientOptions) {
    if (!options.dataset) {
      throw new TypeError("name the dataset: new LomasClient({ transport, dataset, token })");
    }
    this.dataset = options.dataset;
    this.gateway = createClient(GatewayService, options.transport);
    this.callOptions = {
      headers: { authorization: `Bearer ${options.token}` },
      timeoutMs: options.timeoutMs ?? 600_000,
    };
    this.smartnoiseSql = new SmartnoiseSqlClient(this);
    this.opendp = new OpenDpClient(this);
    this.diffprivlib = new DiffPrivLibClient(this);
    this.smartnoiseSynth = new SmartnoiseSynthClient(this);
  }

  // Every unary call goes through here, so every refusal is a typed LomasError (the server stream,
  // `watchQuery`, maps its errors the same way around its loop).
  private async call<T>(send: (options: CallOptions) => Promise<T>): Promise<T> {
    try {
      return await send(this.callOptions);
    } catch (error) {
      throw error instanceof ConnectError ? fromConnectError(error) : error;
    }
  }

  // Datasets ------------------------------------------------------------------------------------

  /** Names of the datasets you hold a grant on. */
  async listDatasets(): Promise<string[]> {
    const names: string[] = [];
    let pageToken = "";
    do {
      const response = await this.call((o) =>
        this.gateway.listAccessibleDatasets({ pageToken }, o),
      );
      names.push(...response.datasetNames);
      pageToken = response.nextPageToken;
    } while (pageToken);
    return names;
  }

  /** The dataset's metadata (`max_ids`, `rows`, `row_privacy`, `columns`...), sent as JSON text. */
  async getDatasetMetadata(): Promise<DatasetMetadata> {
    const response = await this.call((o) =>
      this.gateway.getDatasetMetadata({ dataset: this.dataset }, o),
    );
    const metadata: unknown = JSON.parse(response.metadataJson);
    if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) {
      throw new Error("the gateway sent metadata that is not a JSON object");
    }
    return metadata as DatasetMetadata;
  }

  /** Seeded dummy data that follows the metadata (no private data, free). */
  async getDummyDataset(nbRows = 100, seed: number | bigint = 42): Promise<Table> {
    const request = { dataset: this.dataset, rowCount: dummyRows(nbRows), seed: BigInt(seed) };
    const response = await this.call((o) => this.gateway.getDummyDataset(request, o));
    return tableFromIpcBytes(response.arrowIpc);
  }

  // Budget --------------------------------------------------------------------------------------

  private budget(delta = "") {
    return this.call((o) => this.gateway.getBudget({ dataset: this.dataset, delta }, o));
  }

  /** The budget granted, e.g. `{ initial_epsilon: "10", initial_delta: "0.005" }`. */
  async getInitialBudget(): Promise<InitialBudget> {
    return prefixed("initial_", lossValues((await this.budget()).initial));
  }

  /** The budget charged so far, e.g. `{ total_spent_epsilon: "0.5", total_spent_delta: "0" }`. */
  async getTotalSpentBudget(): Promise<TotalSpentBudget> {
    return prefixed("total_spent_", lossValues((await this.budget()).spent));
  }

  /** What is left, e.g. `{ remaining_epsilon: "9.5", remaining_delta: "0.00499" }`; with `delta`, a
   * zCDP budget is also shown as the epsilon it affords at that delta. */
  async getRemainingBudget(delta?: DecimalText): Promise<RemainingBudget> {
    const response = await this.budget(delta === undefined ? "" : decimalText(delta, "delta"));
    const remaining: RemainingBudget = prefixed("remaining_", lossValues(response.remaining));
    if (response.remainingAtDelta !== undefined) {
      remaining.remaining_epsilon_at_delta = response.remainingAtDelta.epsilon;
      remaining.at_delta = response.remainingAtDelta.delta;
    }
    return remaining;
  }

  // Archive -------------------------------------------------------------------------------------

  /** Your previous real queries on this dataset, newest first, with their releases. */
  async getPreviousQueries(): Promise<PreviousQuery[]> {
    const queries: WirePreviousQuery[] = [];
    let pageToken = "";
    do {
      const response = await this.call((o) =>
        this.gateway.listQueries({ dataset: this.dataset, pageToken }, o),
      );
      queries.push(...response.queries);
      pageToken = response.nextPageToken;
    } while (pageToken);
    return queries.map((q) => ({
      query_id: q.queryId,
      dataset: q.dataset,
      query_kind: queryKind(q.query),
      query: q.query === undefined ? null : toJson(QuerySchema, q.query, queryJsonOptions),
      cost: lossValues(q.cost),
      result: q.release.length > 0 ? tableFromIpcBytes(q.release) : null,
      error_reason: q.errorReason || null,
      submitted_at: q.submitTime === undefined ? null : timestampDate(q.submitTime),
    }));
  }

  // Queries of any kind -------------------------------------------------------------------------

  /** The exact cost a query would be charged (free; nothing runs on the data). */
  async estimate(query: QueryInit): Promise<PrivacyLossValues> {
    const response = await this.call((o) =>
      this.gateway.estimateQueryCost({ dataset: this.dataset, query }, o),
    );
    return lossValues(response.cost);
  }

  /** Run a query and return its DP release (`dummy: true` runs it on dummy data, free). */
  async execute(query: QueryInit, run: RunOptions = {}): Promise<Release> {
    const dummy = run.dummy ?? false;
    const request = {
      dataset: this.dataset,
      query,
      dummy,
      dummyRowCount: dummy ? dummyRows(run.nbRows ?? 100) : 0,
      dummySeed: dummy ? BigInt(run.seed ?? 42) : 0n,
      // Always send a request id, so a retry can never charge twice.
      requestId: run.requestId || (dummy ? "" : crypto.randomUUID()),
      fresh: run.fresh ?? false,
    };
    return releaseOf(await this.call((o) => this.gateway.executeQuery(request, o)));
  }

  // Jobs ----------------------------------------------------------------------------------------

  /** Start a real query and return its job at once (`smartnoiseSql.submit` and `opendp.submit`
   * build the query for you). Every refusal that needs no data (invalid query, budget, access) is
   * thrown here, before any charge. */
  async submit(query: QueryInit, options: SubmitOptions = {}): Promise<QueryJob> {
    const request = {
      dataset: this.dataset,
      query,
      requestId: options.requestId || crypto.randomUUID(),
      fresh: options.fresh ?? false,
    };
    const response = await this.call((o) => this.gateway.submitQuery(request, o));
    return this.job(response.queryId);
  }

  /** The job of one of your queries, by its query id (from `submit` or a release's `query_id`). */
  job(queryId: string): QueryJob {
    return new QueryJob(queryId, {
      watch: (options) => this.watchQuery(queryId, options),
      cancel: async () => {
        const response = await this.call((o) => this.gateway.cancelQuery({ queryId }, o));
        return lossValues(response.refunded);
      },
      release: releaseOf,
    });
  }

  // The server stream, its refusals typed as `call` types them. A caller that leaves early (a
  // `break` in its loop) gets the call aborted and its end read: Connect neither closes the stream
  // nor clears its deadline timer otherwise, and that timer would keep Node.js running.
  private async *watchQuery(
    queryId: string,
    options: WatchOptions,
  ): AsyncGenerator<WatchQueryResponse, void, undefined> {
    const controller = new AbortController();
    const callOptions = {
      ...this.callOptions,
      timeoutMs: options.timeoutMs ?? this.callOptions.timeoutMs,
      signal: controller.signal,
    };
    const stream = this.gateway.watchQuery({ queryId }, callOptions)[Symbol.asyncIterator]();
    let ended = false;
    try {
      for (;;) {
        const next = await stream.next();
        if (next.done) {
          ended = true;
          return;
        }
        yield next.value;
      }
    } catch (error) {
      ended = true;
      throw error instanceof ConnectError ? fromConnectError(error) : error;
    } finally {
      if (!ended) {
        controller.abort();
        await stream.next().catch(() => undefined);
      }
    }
  }
}

// The query as the Python client's MessageToDict gives it: proto field names, every field shown.
const queryJsonOptions = { useProtoFieldName: true, alwaysEmitImplicit: true } as const;

/** The proto name of the query's kind ("smartnoise_sql"), as Python's WhichOneof gives it. */
function queryKind(query: Query | undefined): string | null {
  const kind = query?.kind.case;
  return QuerySchema.fields.find((field) => field.localName === kind)?.name ?? null;
}

/** SmartNoise-SQL options beyond the query, epsilon and delta. */
export interface SmartnoiseSqlOptions {
  /** Mechanism per statistic, e.g. `{ count: "gaussian" }`; empty keeps the library's defaults. */
  mechanisms?: Record<string, string>;
}

/** DP SQL with SmartNoise-SQL. The SQL names the table `df`, as in Lomas. */
export class SmartnoiseSqlClient {
  constructor(private readonly client: LomasClient) {}

  private static build(
    sql: string,
    epsilon: DecimalText,
    delta: DecimalText,
    mechanisms: Record<string, string> = {},
    postprocess = true,
  ): QueryInit {
    return {
      kind: {
        case: "smartnoiseSql",
        value: {
          sql,
          epsilon: decimalText(epsilon, "epsilon"),
          delta: decimalText(delta, "delta"),
          mechanisms,
          postprocess,
        },
      },
    };
  }

  /** The exact cost the query would be charged (SmartNoise-SQL charges per mechanism). */
  cost(
    query: string,
    epsilon: DecimalText,
    delta: DecimalText,
    options: SmartnoiseSqlOptions = {},
  ): Promise<PrivacyLossValues> {
    return this.client.estimate(
      SmartnoiseSqlClient.build(query, epsilon, delta, options.mechanisms),
    );
  }

  /** Run the query and return the DP release. Asking the same query again returns your earlier
   * release for free (`replay`); `fresh: true` pays for a new draw instead. `postprocess: false`
   * returns SmartNoise-SQL's raw noisy aggregates. */
  query(
    query: string,
    epsilon: DecimalText,
    delta: DecimalText,
    options: SmartnoiseSqlOptions & { postprocess?: boolean } & RunOptions = {},
  ): Promise<Release> {
    const built = SmartnoiseSqlClient.build(
      query,
      epsilon,
      delta,
      options.mechanisms,
      options.postprocess,
    );
    return this.client.execute(built, options);
  }

  /** Start the query and return its job at once: `job.result()` waits for the release,
   * `job.watch()` follows it, `job.cancel()` stops it before it touches data. */
  submit(
    query: string,
    epsilon: DecimalText,
    delta: DecimalText,
    options: SmartnoiseSqlOptions & { postprocess?: boolean } & SubmitOptions = {},
  ): Promise<QueryJob> {
    const built = SmartnoiseSqlClient.build(
      query,
      epsilon,
      delta,
      options.mechanisms,
      options.postprocess,
    );
    return this.client.submit(built, options);
  }
}

/** An OpenDP pipeline, in one of the two forms Lomas accepts: a measurement in OpenDP's JSON form
 * (`dp.serialize` in Python; its input is the dataset as CSV text without a header line, columns in
 * metadata order), or a Polars plan with OpenDP's `dp` expressions
 * (`LazyFrame.serialize(format="json")`). */
export type OpenDpPipeline = { measurementJson: string } | { planJson: string };

/** How an OpenDP pipeline is priced and run (as the Python client's keyword arguments). */
export interface PipelineOptions {
  /** Turns a zCDP loss or a privacy curve into (epsilon, delta) at this delta (curves need it). */
  fixedDelta?: DecimalText;
  /** The noise of a Polars query (default "laplace"). */
  mechanism?: "laplace" | "gaussian";
  /** The scale of a Polars query's expressions that set none. */
  globalScale?: DecimalText;
  /** A Polars query's minimum group size when its group keys are not public. */
  threshold?: number | bigint;
}

const MECHANISMS = { laplace: OpenDpMechanism.LAPLACE, gaussian: OpenDpMechanism.GAUSSIAN };

/** OpenDP pipelines. Costs are the pipeline's privacy map at the metadata's `max_ids`: epsilon for
 * pure DP, (epsilon, delta) for approximate DP, rho for zCDP. */
export class OpenDpClient {
  constructor(private readonly client: LomasClient) {}

  private static build(pipeline: OpenDpPipeline, options: PipelineOptions): QueryInit {
    const fixedDelta =
      options.fixedDelta === undefined ? "" : decimalText(options.fixedDelta, "fixedDelta");
    if ("measurementJson" in pipeline) {
      return {
        kind: {
          case: "opendp",
          value: {
            pipeline: { case: "measurementJson", value: pipeline.measurementJson },
            fixedDelta,
          },
        },
      };
    }
    const mechanism = options.mechanism ?? "laplace";
    if (!Object.hasOwn(MECHANISMS, mechanism)) {
      throw new TypeError(`mechanism must be one of ${Object.keys(MECHANISMS).join(", ")}`);
    }
    const polars = {
      planJson: pipeline.planJson,
      mechanism: MECHANISMS[mechanism],
      globalScale:
        options.globalScale === undefined ? "" : decimalText(options.globalScale, "globalScale"),
      threshold: BigInt(options.threshold ?? 0),
    };
    return {
      kind: { case: "opendp", value: { pipeline: { case: "polars", value: polars }, fixedDelta } },
    };
  }

  /** The exact cost the pipeline would be charged (free; nothing runs on the data). */
  cost(pipeline: OpenDpPipeline, options: PipelineOptions = {}): Promise<PrivacyLossValues> {
    return this.client.estimate(OpenDpClient.build(pipeline, options));
  }

  /** Run the pipeline and return its DP release. A measurement's release is in column `value` (one
   * row for a number, one row per element for a list; `key`/`value` for a map); a Polars query
   * returns its frame. `dummy`, `requestId` and `fresh` work as for SmartNoise-SQL. */
  query(pipeline: OpenDpPipeline, options: PipelineOptions & RunOptions = {}): Promise<Release> {
    return this.client.execute(OpenDpClient.build(pipeline, options), options);
  }

  /** Start the pipeline and return its job at once (see `SmartnoiseSqlClient.submit`). */
  submit(
    pipeline: OpenDpPipeline,
    options: PipelineOptions & SubmitOptions = {},
  ): Promise<QueryJob> {
    return this.client.submit(OpenDpClient.build(pipeline, options), options);
  }
}
