// DP machine learning with DiffPrivLib, as the Python client's `client.diffprivlib` (Lomas's names):
//
//   const pipeline = { steps: [
//     { name: "scaler", type: "StandardScaler", params: { epsilon: 0.5, bounds: [[30, 13], [65, 23]] } },
//     { name: "classifier", type: "LogisticRegression", params: { epsilon: 1.0, data_norm: 83.69 } },
//   ] };
//   await client.diffprivlib.cost(pipeline, ["bill_length_mm", "bill_depth_mm"], ["species"]);
//   const release = await client.diffprivlib.query(pipeline, features, ["species"]);
//   release.parameter("classifier", "coef_"); // { shape, values, labels }
//   release.score; // null: no score is released unless scoreEpsilon pays for one
//   await client.diffprivlib.query(pipeline, features, { targetColumns, scoreEpsilon: "0.5" });
//   // a DP accuracy on the held-out rows, charged 0.5 on top (classifiers); a dummy run has the
//   // exact score of the public dummy data
//
// The pipeline is declarative JSON (never a pickle); the release is an Arrow table of the fitted
// parameters, one row per parameter (columns step, type, parameter, shape, values, labels,
// floating_point_noise: see lomas_executor.diffprivlib_queries).

import type { Table } from "apache-arrow";
import type { PrivacyLossValues, QueryInit, Release, RunOptions, SubmitOptions } from "./client.js";
import { decimalText, type DecimalText } from "./decimal.js";
import type { QueryJob } from "./jobs.js";
import { optionalDecimalText, type QueryRunner } from "./query-family.js";

/** One step of a DiffPrivLib pipeline: its name, its DiffPrivLib class and its parameters. */
export interface DiffPrivLibStep {
  name: string;
  type: string;
  params?: Record<string, unknown>;
}

/** A DiffPrivLib pipeline: the JSON object, or its text. */
export type DiffPrivLibPipeline = { steps: DiffPrivLibStep[] } | string;

/** How the training splits and cleans its rows (as the Python client's keyword arguments). */
export interface DiffPrivLibOptions {
  /** Target columns: one for a classifier or a regressor, none for KMeans or PCA. */
  targetColumns?: string[];
  /** Fraction of the rows held out for the score (default "0.2"). */
  testSize?: DecimalText;
  /** Seed of the train/test split (default 1, as in Lomas). */
  testTrainSplitSeed?: number | bigint;
  /** "drop" (default), "mean", "median" or "most_frequent": the fill values come from the
   * metadata, never from the data. */
  imputerStrategy?: string;
  /** The epsilon of a DP score on the held-out rows (classifiers: a noisy accuracy), charged on
   * top of the steps' epsilon. Without it a real run releases no score (`release.score` is null);
   * a dummy run always has the exact score. */
  scoreEpsilon?: DecimalText;
}

/** One released parameter. */
export interface ReleasedParameter {
  /** The DiffPrivLib class of its step ("Pipeline" for rows about the whole pipeline). */
  type: string;
  shape: number[];
  /** The values, flattened in C order (empty for text). */
  values: number[];
  /** Text values: the classes, names, kinds. */
  labels: string[];
  /** Whether the value carries noise drawn with floating-point arithmetic. */
  floatingPointNoise: boolean;
}

/** A trained pipeline's release: the table of fitted parameters and what it cost. */
export class DiffPrivLibRelease {
  readonly table: Table;
  readonly query_id: string;
  readonly cost: PrivacyLossValues;
  readonly replay: boolean;
  private readonly rows = new Map<string, ReleasedParameter>();

  constructor(release: Release) {
    this.table = release.table;
    this.query_id = release.query_id;
    this.cost = release.cost;
    this.replay = release.replay;
    for (const row of release.table) {
      const value = row.toJSON() as Record<string, unknown>;
      const list = (name: string): unknown[] => {
        const vector = value[name] as { toArray(): ArrayLike<unknown> } | null;
        return vector === null ? [] : Array.from(vector.toArray());
      };
      this.rows.set(`${String(value.step)}\u0000${String(value.parameter)}`, {
        type: String(value.type),
        shape: list("shape").map(Number),
        values: list("values").map(Number),
        labels: list("labels").map(String),
        floatingPointNoise: Boolean(value.floating_point_noise),
      });
    }
  }

  /** One released parameter (`step` "" for the pipeline's own rows: steps, score, ...). */
  parameter(step: string, name: string): ReleasedParameter {
    const row = this.rows.get(`${step}\u0000${name}`);
    if (row === undefined) {
      throw new RangeError(`the release has no parameter ${name} for step "${step}"`);
    }
    return row;
  }

  /** The score on the held-out rows; null when none was released (see `scoreMethod`). */
  get score(): number | null {
    return this.parameter("", "score").values[0] ?? null;
  }

  /** What the score is: "accuracy", "r2", "negative_inertia" or "average_log_likelihood". */
  get scoreKind(): string {
    return this.parameter("", "score").labels[0] ?? "";
  }

  /** How the score was released: "discrete_laplace" (a DP accuracy paid by `scoreEpsilon`),
   * "exact_on_dummy_data" (a dummy run) or "not_released". */
  get scoreMethod(): string {
    return this.parameter("", "score").labels[1] ?? "";
  }

  /** The step names, in order. */
  get steps(): string[] {
    return this.parameter("", "steps").labels;
  }

  /** The steps whose noise is drawn with floating-point arithmetic (all DiffPrivLib mechanisms:
   * a known weakness). */
  get floatingPointNoise(): string[] {
    return this.parameter("", "floating_point_noise").labels;
  }
}

/** DiffPrivLib training queries. The cost is the sum of the steps' epsilon (pure DP) plus
 * `scoreEpsilon`, computed without data; bounds and norms must be in the pipeline. */
export class DiffPrivLibClient {
  constructor(private readonly client: QueryRunner) {}

  private static build(
    pipeline: DiffPrivLibPipeline,
    featureColumns: string[],
    options: DiffPrivLibOptions,
  ): QueryInit {
    return {
      kind: {
        case: "diffprivlib",
        value: {
          pipelineJson: typeof pipeline === "string" ? pipeline : JSON.stringify(pipeline),
          featureColumns,
          targetColumns: options.targetColumns ?? [],
          testSize: decimalText(options.testSize ?? "0.2", "testSize"),
          testTrainSplitSeed: BigInt(options.testTrainSplitSeed ?? 1),
          imputerStrategy: options.imputerStrategy ?? "drop",
          scoreEpsilon: optionalDecimalText(options.scoreEpsilon, "scoreEpsilon"),
        },
      },
    };
  }

  /** The exact cost the training would be charged (free; nothing reads the data). */
  cost(
    pipeline: DiffPrivLibPipeline,
    featureColumns: string[],
    options: DiffPrivLibOptions = {},
  ): Promise<PrivacyLossValues> {
    return this.client.estimate(DiffPrivLibClient.build(pipeline, featureColumns, options));
  }

  /** Train the pipeline and return its release (`dummy: true` trains on dummy data, free). */
  async query(
    pipeline: DiffPrivLibPipeline,
    featureColumns: string[],
    options: DiffPrivLibOptions & RunOptions = {},
  ): Promise<DiffPrivLibRelease> {
    const built = DiffPrivLibClient.build(pipeline, featureColumns, options);
    return new DiffPrivLibRelease(await this.client.execute(built, options));
  }

  /** Start the training and return its job at once; `new DiffPrivLibRelease(await job.result())`
   * is the release. */
  submit(
    pipeline: DiffPrivLibPipeline,
    featureColumns: string[],
    options: DiffPrivLibOptions & SubmitOptions = {},
  ): Promise<QueryJob> {
    return this.client.submit(DiffPrivLibClient.build(pipeline, featureColumns, options), options);
  }
}
