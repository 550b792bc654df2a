// DP synthetic data with SmartNoise-Synth, as the Python client's `client.smartnoise_synth` (Lomas's
// names, in camelCase):
//
//   await client.smartnoiseSynth.cost("mst", "1", { selectCols: ["species", "island"] });
//   const release = await client.smartnoiseSynth.query("mst", "1", {
//     selectCols: ["species", "island"],
//     nbSamples: 100,
//   });
//   release.table; // an Arrow table of samples: exactly the selected columns, nbSamples rows
//
// "mwem", "aim" and "mst" run everywhere; "patectgan" and "pategan" only where the platform runs its
// heavy pool (otherwise PoolUnavailable, HEAVY_POOL_UNAVAILABLE, before any charge); "dpctgan" and
// "dpgan" are refused (their accountant, Opacus 0.14, warns that its budget is incorrect).
// returnModel is refused: no model of private data leaves the platform.

import type { PrivacyLossValues, QueryInit, Release, RunOptions, SubmitOptions } from "./client.js";
import { decimalText, type DecimalText } from "./decimal.js";
import type { QueryJob } from "./jobs.js";
import { optionalDecimalText, type QueryRunner } from "./query-family.js";

/** Lomas's default number of samples. */
export const DEFAULT_SYNTH_SAMPLES = 200;

/** What a synthesis is priced on (the Python client's keyword arguments). */
export interface SmartnoiseSynthOptions {
  /** Delta, for the synthesizers that spend one (aim and mst take 1e-9 when none is given). */
  delta?: DecimalText;
  /** Columns to synthesize (default: every column of the metadata but identifiers). */
  selectCols?: string[];
  /** The synthesizer's own parameters (JSON values only), e.g. `{ rounds: 5 }` for aim. */
  synthParams?: Record<string, unknown>;
  /** Whether missing values are modelled (default true, as in Lomas). */
  nullable?: boolean;
  /** Per-column transformer constraints in smartnoise-synth-logger's JSON form, or its text. */
  constraints?: Record<string, unknown> | string;
}

/** What a synthesis releases. */
export interface SmartnoiseSynthSampling {
  /** Number of samples (default 200, as in Lomas). */
  nbSamples?: number;
  /** A SQL WHERE clause the samples must satisfy, e.g. "species = 'Adelie'". */
  condition?: string;
  /** Lomas's flag to return the model: always refused by the platform. */
  returnModel?: boolean;
}

function constraintsJson(constraints: SmartnoiseSynthOptions["constraints"]): string {
  if (constraints === undefined) return "";
  if (typeof constraints === "string") return constraints;
  return Object.keys(constraints).length === 0 ? "" : JSON.stringify(constraints);
}

/** SmartNoise-Synth syntheses. The cost is exactly the epsilon asked for (and the delta for the
 * synthesizers that spend one), computed without data; the release is samples, never a model. */
export class SmartnoiseSynthClient {
  constructor(private readonly client: QueryRunner) {}

  private static build(
    synthName: string,
    epsilon: DecimalText,
    options: SmartnoiseSynthOptions & SmartnoiseSynthSampling,
  ): QueryInit {
    const nbSamples = options.nbSamples ?? DEFAULT_SYNTH_SAMPLES;
    if (!Number.isInteger(nbSamples) || nbSamples < 0) {
      throw new TypeError("nbSamples must be a non-negative integer");
    }
    const params = options.synthParams ?? {};
    return {
      kind: {
        case: "smartnoiseSynth",
        value: {
          synthName,
          epsilon: decimalText(epsilon, "epsilon"),
          delta: optionalDecimalText(options.delta, "delta"),
          selectCols: options.selectCols ?? [],
          synthParamsJson: Object.keys(params).length === 0 ? "" : JSON.stringify(params),
          nullable: options.nullable ?? true,
          constraintsJson: constraintsJson(options.constraints),
          returnModel: options.returnModel ?? false,
          condition: options.condition ?? "",
          nbSamples: BigInt(nbSamples),
        },
      },
    };
  }

  /** The exact cost the synthesis would be charged (free; nothing reads the data). */
  cost(
    synthName: string,
    epsilon: DecimalText,
    options: SmartnoiseSynthOptions = {},
  ): Promise<PrivacyLossValues> {
    return this.client.estimate(SmartnoiseSynthClient.build(synthName, epsilon, options));
  }

  /** Fit the synthesizer and return its samples (`dummy: true` fits on dummy data, free). */
  query(
    synthName: string,
    epsilon: DecimalText,
    options: SmartnoiseSynthOptions & SmartnoiseSynthSampling & RunOptions = {},
  ): Promise<Release> {
    return this.client.execute(SmartnoiseSynthClient.build(synthName, epsilon, options), options);
  }

  /** Start the synthesis and return its job at once (`job.result()` waits for the samples). */
  submit(
    synthName: string,
    epsilon: DecimalText,
    options: SmartnoiseSynthOptions &
      Omit<SmartnoiseSynthSampling, "returnModel"> &
      SubmitOptions = {},
  ): Promise<QueryJob> {
    return this.client.submit(SmartnoiseSynthClient.build(synthName, epsilon, options), options);
  }
}
