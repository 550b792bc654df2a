// Typed errors, chosen by the server's `google.rpc.ErrorInfo.reason` (and, failing that, by status
// code), as the Python client's lomas.client.errors does: the same classes for the same reasons.

import { ConnectError } from "@connectrpc/connect";
import { ErrorReason } from "./gen/lomas/common/v1/error_reason_pb.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { Code as RpcCode } from "./gen/google/rpc/code_pb.js";

/** An error reported by the platform. */
export class LomasError extends Error {
  /** The gRPC status code's name, e.g. "NOT_FOUND". */
  readonly code: string;
  /** The ErrorInfo reason, from the registry lomas.common.v1.ErrorReason ("DATASET_NOT_FOUND");
   * the code's name when the error carries no ErrorInfo (a proxy's own refusal, say). */
  readonly reason: string;
  /** The ErrorInfo metadata: lowerCamel keys, one value each. */
  readonly metadata: Record<string, string>;

  constructor(
    code: string,
    reason: string,
    message: string,
    metadata: Record<string, string>,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.reason = reason;
    this.metadata = metadata;
  }
}

/** No token, or a token that is expired, malformed or not signed by the trusted issuer. */
export class Unauthenticated extends LomasError {}

/** No grant on the dataset, querying suspended, or an admin call without the admin role. */
export class AccessDenied extends LomasError {}

/** The query costs more than what is left; `metadata` has what was requested and what remains. */
export class BudgetExhausted extends LomasError {}

/** Too many requests or concurrent queries for your user; retry later (nothing spent). */
export class LimitExceeded extends LomasError {}

/** The query is not valid for the dataset's metadata (nothing was spent). */
export class InvalidQuery extends LomasError {}

/** A parameter is malformed or out of range (nothing was spent). */
export class InvalidArgument extends LomasError {}

/** The named resource does not exist. */
export class NotFound extends LomasError {}

/** A different resource with that name exists. */
export class AlreadyExists extends LomasError {}

/** A platform service is down; retrying later (with the same request id) is safe. `metadata.peer`
 * names it ("gateway" when the platform did not answer at all). */
export class BackendUnavailable extends LomasError {}

/** The query did not finish in time; retry with the same request id to collect its release. */
export class QueryTimeout extends LomasError {}

/** The query failed after touching data; its cost is charged (no refund after data access).
 * Retrying with the same request id returns this same failure and charges nothing more. */
export class ExecutionFailed extends LomasError {
  /** What the failed query was charged, e.g. `{ epsilon: "1", delta: "0.00001" }` (from the
   * `chargedEpsilon`, `chargedDelta` or `chargedRho` metadata), as exact decimal strings. */
  get charged(): Record<string, string> {
    const charged: Record<string, string> = {};
    for (const [key, value] of Object.entries(this.metadata)) {
      if (key.startsWith("charged")) {
        charged[key.slice("charged".length).toLowerCase()] = value;
      }
    }
    return charged;
  }
}

/** The query ran past its worker's time limit after touching data; its cost is charged (see
 * `charged`). Not `QueryTimeout`: there is nothing left to collect. */
export class TimeLimitExceeded extends ExecutionFailed {}

/** The query needs a worker pool this platform has not installed (the GAN synthesizers need the
 * heavy pool, `metadata.pool`); nothing was charged. */
export class PoolUnavailable extends LomasError {}

/** The dataset's data cannot be read; nothing touched data, so nothing is charged. An administrator
 * must fix the source. */
export class SourceUnavailable extends LomasError {}

/** The query was cancelled before it touched the data: its reservation was returned in full and
 * nothing was released. */
export class QueryCancelled extends LomasError {}

/** Too late to cancel: a worker already touched the data, so the query runs to its end and its
 * charge stands (there is no refund after data access). */
export class DataAccessed extends LomasError {}

/** The worker's cost of the query differed from what was reserved: nothing ran, nothing was
 * charged; sending the query again prices it anew. */
export class CostMismatch extends LomasError {}

type ErrorClass = new (
  code: string,
  reason: string,
  message: string,
  metadata: Record<string, string>,
  options?: ErrorOptions,
) => LomasError;

// Typed errors by registry value; reasons not named here map by their gRPC code below. Naming the
// values through the generated enum makes a reason renamed in the registry a compile error here.
const BY_REGISTRY: [ErrorReason, ErrorClass][] = [
  [ErrorReason.PRIVACY_BUDGET_EXHAUSTED, BudgetExhausted],
  [ErrorReason.DATASET_CAP_EXHAUSTED, BudgetExhausted],
  [ErrorReason.QUERY_INVALID, InvalidQuery],
  [ErrorReason.QUERY_TOO_LONG, InvalidQuery],
  [ErrorReason.QUERY_LIMIT_EXCEEDED, InvalidQuery],
  [ErrorReason.GROUP_KEYS_NOT_PUBLIC, InvalidQuery],
  [ErrorReason.OPENDP_PIPELINE_REFUSED, InvalidQuery],
  [ErrorReason.OPENDP_INPUT_DOMAIN_MISMATCH, InvalidQuery],
  [ErrorReason.DIFFPRIVLIB_PIPELINE_REFUSED, InvalidQuery],
  [ErrorReason.DIFFPRIVLIB_PRIVACY_LEAK, InvalidQuery],
  [ErrorReason.SYNTHESIZER_REFUSED, InvalidQuery],
  [ErrorReason.HEAVY_POOL_UNAVAILABLE, PoolUnavailable],
  [ErrorReason.DELTA_REQUIRED, InvalidQuery],
  [ErrorReason.DELTA_TOO_LARGE, InvalidQuery],
  [ErrorReason.QUERY_TIMEOUT, QueryTimeout],
  [ErrorReason.QUERY_EXECUTION_FAILED, ExecutionFailed],
  [ErrorReason.QUERY_TIME_LIMIT_EXCEEDED, TimeLimitExceeded],
  [ErrorReason.BACKEND_UNAVAILABLE, BackendUnavailable],
  [ErrorReason.RATE_LIMITED, LimitExceeded],
  [ErrorReason.TOO_MANY_CONCURRENT_QUERIES, LimitExceeded],
  [ErrorReason.TOO_MANY_CONCURRENT_CALLS, LimitExceeded],
  [ErrorReason.FREE_CALL_LIMIT_EXCEEDED, LimitExceeded],
  [ErrorReason.FREE_CALLS_BUSY, LimitExceeded],
  [ErrorReason.COST_MISMATCH, CostMismatch],
  [ErrorReason.DATASET_SOURCE_UNAVAILABLE, SourceUnavailable],
  [ErrorReason.QUERY_CANCELLED, QueryCancelled],
  [ErrorReason.DATA_ACCESSED, DataAccessed],
];

// ErrorInfo.reason is the registry value's name without its ERROR_REASON_ prefix, which is the name
// protoc-gen-es gives the enum member.
const BY_REASON = new Map<string, ErrorClass>(
  BY_REGISTRY.map(([value, errorClass]) => [ErrorReason[value], errorClass]),
);

const BY_CODE = new Map<number, ErrorClass>([
  [RpcCode.UNAUTHENTICATED, Unauthenticated],
  [RpcCode.PERMISSION_DENIED, AccessDenied],
  [RpcCode.RESOURCE_EXHAUSTED, LimitExceeded],
  [RpcCode.INVALID_ARGUMENT, InvalidArgument],
  [RpcCode.NOT_FOUND, NotFound],
  [RpcCode.ALREADY_EXISTS, AlreadyExists],
  [RpcCode.UNAVAILABLE, BackendUnavailable],
  [RpcCode.DEADLINE_EXCEEDED, QueryTimeout],
  [RpcCode.CANCELLED, QueryCancelled],
]);

/** The gRPC name of a status code ("NOT_FOUND"); Connect's codes have the gRPC numbers. */
export function codeName(code: number): string {
  return RpcCode[code] ?? "UNKNOWN";
}

/** The typed error of a failed call (Connect decodes grpc-status-details-bin into `details`). */
export function fromConnectError(error: ConnectError): LomasError {
  const status: number = error.code;
  const code = codeName(status);
  let reason = code;
  let metadata: Record<string, string> = {};
  const [info] = error.findDetails(ErrorInfoSchema);
  if (info !== undefined) {
    reason = info.reason;
    metadata = { ...info.metadata };
  }
  if (status === RpcCode.UNAVAILABLE && !("peer" in metadata)) {
    // No ErrorInfo: the platform did not answer at all, so the gateway (or the proxy in front of
    // it) is what was unavailable. Every outage the platform reports names its own peer.
    metadata.peer = "gateway";
  }
  const errorClass = BY_REASON.get(reason) ?? BY_CODE.get(status) ?? LomasError;
  return new errorClass(code, reason, error.rawMessage, metadata, { cause: error });
}
