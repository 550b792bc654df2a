// client.diffprivlib against an in-process gateway: the query it sends (Lomas's names, decimals as
// strings, the pipeline as JSON), its refusals typed, and the release table read by step and name.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConnectError, createRouterTransport } from "@connectrpc/connect";
import {
  Bool,
  Field,
  Float64,
  Int64,
  List,
  Table,
  Utf8,
  tableToIPC,
  vectorFromArray,
} from "apache-arrow";
import { InvalidQuery, LomasClient } from "../index.js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { GatewayService } from "../gen/lomas/gateway/v1/gateway_pb.js";
import type { DiffPrivLibQuery } from "../gen/lomas/common/v1/query_pb.js";
import { create } from "@bufbuild/protobuf";

const PIPELINE = {
  steps: [
    {
      name: "scaler",
      type: "StandardScaler",
      params: {
        epsilon: 0.5,
        bounds: [
          [30, 13],
          [65, 23],
        ],
      },
    },
    { name: "classifier", type: "LogisticRegression", params: { epsilon: 1.0, data_norm: 83.69 } },
  ],
};
const FEATURES = ["bill_length_mm", "bill_depth_mm"];

function listOf<T extends Float64 | Int64 | Utf8>(type: T) {
  return new List(new Field("item", type, true));
}

// A release as the executor writes it (a few of its rows, column by column).
function releaseBytes(score: number[] = [0.75], method = "discrete_laplace"): Uint8Array {
  const table = new Table({
    step: vectorFromArray(["", "classifier", "", ""], new Utf8()),
    type: vectorFromArray(["Pipeline", "LogisticRegression", "Pipeline", "Pipeline"], new Utf8()),
    parameter: vectorFromArray(["steps", "coef_", "score", "floating_point_noise"], new Utf8()),
    shape: vectorFromArray([[2n], [3n, 2n], [], [2n]], listOf(new Int64())),
    values: vectorFromArray([[], [1, 2, 3, 4, 5, 6], score, []], listOf(new Float64())),
    labels: vectorFromArray(
      [["scaler", "classifier"], [], ["accuracy", method], ["scaler", "classifier"]],
      listOf(new Utf8()),
    ),
    floating_point_noise: vectorFromArray([false, true, false, true], new Bool()),
  });
  return tableToIPC(table, "stream");
}

describe("client.diffprivlib", () => {
  it("sends the pipeline as JSON with Lomas's defaults and reads the release", async () => {
    const sent: DiffPrivLibQuery[] = [];
    const transport = createRouterTransport((router) =>
      router.service(GatewayService, {
        estimateQueryCost(request) {
          assert.equal(request.query?.kind.case, "diffprivlib");
          return { cost: { loss: { case: "pureDp", value: { epsilon: "1.5" } } } };
        },
        executeQuery(request) {
          if (request.query?.kind.case === "diffprivlib") sent.push(request.query.kind.value);
          const paid = sent.at(-1)?.scoreEpsilon !== "";
          return {
            release: paid ? releaseBytes() : releaseBytes([], "not_released"),
            queryId: "q-1",
            cost: { loss: { case: "pureDp", value: { epsilon: "1.5" } } },
          };
        },
      }),
    );
    const client = new LomasClient({ transport, dataset: "PENGUIN", token: "t" });
    assert.deepEqual(
      await client.diffprivlib.cost(PIPELINE, FEATURES, { targetColumns: ["species"] }),
      {
        epsilon: "1.5",
        delta: "0",
      },
    );
    const release = await client.diffprivlib.query(PIPELINE, FEATURES, {
      targetColumns: ["species"],
      testSize: "0.25",
      scoreEpsilon: "0.5",
    });
    const query = sent[0];
    assert.ok(query !== undefined);
    assert.deepEqual(JSON.parse(query.pipelineJson), PIPELINE);
    assert.deepEqual(query.featureColumns, FEATURES);
    assert.deepEqual(query.targetColumns, ["species"]);
    assert.equal(query.testSize, "0.25");
    assert.equal(query.testTrainSplitSeed, 1n);
    assert.equal(query.imputerStrategy, "drop");
    assert.equal(query.scoreEpsilon, "0.5");
    assert.equal(release.score, 0.75);
    assert.equal(release.scoreKind, "accuracy");
    assert.equal(release.scoreMethod, "discrete_laplace");
    assert.deepEqual(release.steps, ["scaler", "classifier"]);
    assert.deepEqual(release.floatingPointNoise, ["scaler", "classifier"]);
    assert.deepEqual(release.parameter("classifier", "coef_"), {
      type: "LogisticRegression",
      shape: [3, 2],
      values: [1, 2, 3, 4, 5, 6],
      labels: [],
      floatingPointNoise: true,
    });
    assert.deepEqual(release.cost, { epsilon: "1.5", delta: "0" });
    assert.throws(() => release.parameter("scaler", "nope"), RangeError);
    // Without scoreEpsilon nothing is sent for it, and the release has no score.
    const unscored = await client.diffprivlib.query(PIPELINE, FEATURES, {
      targetColumns: ["species"],
    });
    assert.equal(sent.at(-1)?.scoreEpsilon, "");
    assert.equal(unscored.score, null);
    assert.equal(unscored.scoreMethod, "not_released");
    assert.throws(
      () => client.diffprivlib.cost(PIPELINE, FEATURES, { scoreEpsilon: "half" }),
      TypeError,
    );
  });

  it("types a privacy-leak refusal as InvalidQuery with its reason", async () => {
    const info = create(ErrorInfoSchema, {
      reason: "DIFFPRIVLIB_PRIVACY_LEAK",
      domain: "lomas.mesh",
      metadata: { step: "scaler", parameter: "bounds" },
    });
    const transport = createRouterTransport((router) =>
      router.service(GatewayService, {
        estimateQueryCost() {
          throw new ConnectError("step 'scaler', parameter 'bounds': must be given", 3, undefined, [
            { desc: ErrorInfoSchema, value: info },
          ]);
        },
      }),
    );
    const client = new LomasClient({ transport, dataset: "PENGUIN", token: "t" });
    await assert.rejects(client.diffprivlib.cost('{"steps": []}', FEATURES), (error: unknown) => {
      assert.ok(error instanceof InvalidQuery);
      assert.equal(error.reason, "DIFFPRIVLIB_PRIVACY_LEAK");
      assert.deepEqual(error.metadata, { step: "scaler", parameter: "bounds" });
      return true;
    });
  });
});
