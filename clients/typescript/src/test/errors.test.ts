import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import {
  AccessDenied,
  BackendUnavailable,
  BudgetExhausted,
  ExecutionFailed,
  fromConnectError,
  InvalidQuery,
  LimitExceeded,
  LomasError,
  NotFound,
  Unauthenticated,
} from "../errors.js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";

const DOMAIN = "lomas.mesh";

/** The error a gRPC client reads from a trailer: grpc-status, grpc-message and, with an ErrorInfo,
 * grpc-status-details-bin (a google.rpc.Status), decoded by Connect's own gRPC code. */
function trailerError(
  code: number,
  message: string,
  info?: { reason: string; metadata?: Record<string, string> },
): ConnectError {
  const trailer = new Headers({
    "grpc-status": String(code),
    "grpc-message": encodeURIComponent(message),
  });
  if (info !== undefined) {
    const status = create(StatusSchema, {
      code,
      message,
      details: [anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { domain: DOMAIN, ...info }))],
    });
    trailer.set(
      "grpc-status-details-bin",
      Buffer.from(toBinary(StatusSchema, status)).toString("base64"),
    );
  }
  const error = findTrailerError(trailer);
  assert.ok(error !== undefined);
  return error;
}

describe("fromConnectError", () => {
  it("maps a registry reason to its class, with code name, reason, message and metadata", () => {
    const metadata = { requestedEpsilon: "1000", remainingEpsilon: "9.5" };
    const source = trailerError(8, "the budget is too small", {
      reason: "PRIVACY_BUDGET_EXHAUSTED",
      metadata,
    });
    const error = fromConnectError(source);
    assert.ok(
      error instanceof BudgetExhausted && error instanceof LomasError && error instanceof Error,
    );
    assert.equal(error.name, "BudgetExhausted");
    assert.equal(error.code, "RESOURCE_EXHAUSTED");
    assert.equal(error.reason, "PRIVACY_BUDGET_EXHAUSTED");
    assert.equal(error.message, "the budget is too small");
    assert.deepEqual(error.metadata, metadata);
    assert.equal(error.cause, source);
  });

  it("maps a reason it has no class for by the status code", () => {
    const notFound = fromConnectError(
      trailerError(5, "no such dataset", { reason: "DATASET_NOT_FOUND" }),
    );
    assert.ok(notFound instanceof NotFound);
    assert.deepEqual([notFound.code, notFound.reason], ["NOT_FOUND", "DATASET_NOT_FOUND"]);
    const denied = fromConnectError(
      trailerError(7, "no grant", { reason: "DATASET_ACCESS_DENIED" }),
    );
    assert.ok(denied instanceof AccessDenied);
  });

  it("prefers the reason to the code", () => {
    const limited = fromConnectError(trailerError(8, "slow down", { reason: "RATE_LIMITED" }));
    assert.ok(limited instanceof LimitExceeded && !(limited instanceof BudgetExhausted));
    const invalid = fromConnectError(
      trailerError(3, "unknown column", { reason: "QUERY_INVALID" }),
    );
    assert.ok(invalid instanceof InvalidQuery);
  });

  it("takes the code's name as reason when a proxy refused without ErrorInfo", () => {
    const error = fromConnectError(trailerError(16, "Jwt is missing"));
    assert.ok(error instanceof Unauthenticated);
    assert.deepEqual(
      [error.code, error.reason, error.message],
      ["UNAUTHENTICATED", "UNAUTHENTICATED", "Jwt is missing"],
    );
    assert.deepEqual(error.metadata, {});
  });

  it("names the gateway as the unavailable peer only when the platform did not say", () => {
    const silent = fromConnectError(new ConnectError("connection refused", 14));
    assert.ok(silent instanceof BackendUnavailable);
    assert.deepEqual(silent.metadata, { peer: "gateway" });
    const reported = fromConnectError(
      trailerError(14, "down", { reason: "BACKEND_UNAVAILABLE", metadata: { peer: "budget" } }),
    );
    assert.deepEqual(reported.metadata, { peer: "budget" });
  });

  it("uses gRPC's names for codes, and the base class for codes without a class", () => {
    const error = fromConnectError(trailerError(10, "aborted", { reason: "SOMETHING_NEW" }));
    assert.equal(error.constructor, LomasError);
    assert.deepEqual([error.code, error.reason], ["ABORTED", "SOMETHING_NEW"]);
  });

  it("reads what a failed execution charged as exact decimal strings", () => {
    const metadata = {
      queryId: "q1",
      chargedEpsilon: "0.1",
      chargedDelta: "0.000010000000000000001",
    };
    const error = fromConnectError(
      trailerError(13, "failed", { reason: "QUERY_EXECUTION_FAILED", metadata }),
    );
    assert.ok(error instanceof ExecutionFailed);
    assert.deepEqual(error.charged, { epsilon: "0.1", delta: "0.000010000000000000001" });
  });
});
