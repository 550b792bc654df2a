package lomas

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "lomas-mesh/clients/go/lomas/common/v1"
)

// Error is an error reported by the platform: its gRPC code, the `reason` and `metadata` of the
// google.rpc.ErrorInfo in the status details, and the message. It wraps one of the Err* kinds below,
// as the Python client raises one of its exception classes, so that
//
//	errors.Is(err, lomas.ErrBudgetExhausted)
//
// tells what happened, and errors.As(err, &lomasError) gives the details.
type Error struct {
	Code     codes.Code
	Reason   string // ErrorInfo.reason ("PRIVACY_BUDGET_EXHAUSTED"), or the code's name without one
	Message  string
	Metadata map[string]string // ErrorInfo.metadata: lowerCamel keys, one value each
	kind     error
}

// CodeName is the gRPC code's canonical name, as in google/rpc/code.proto: "NOT_FOUND".
func (e *Error) CodeName() string { return codeName(e.Code) }

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Reason
	}
	return e.Reason + ": " + e.Message
}

// Unwrap is the kind (ErrNotFound, ErrBudgetExhausted...), or nil for errors of no known kind.
func (e *Error) Unwrap() error { return e.kind }

// Charged is what a query that failed after touching data was charged (ErrExecutionFailed), from
// the `chargedEpsilon` and `chargedDelta` (or `chargedRho`) metadata.
func (e *Error) Charged() (PrivacyLoss, error) {
	if rho, ok := e.Metadata["chargedRho"]; ok {
		return lossFromText(RhoZCDP, "", "", rho)
	}
	epsilon, ok := e.Metadata["chargedEpsilon"]
	if !ok {
		return PrivacyLoss{}, errors.New("lomas: the error says nothing was charged")
	}
	if delta, ok := e.Metadata["chargedDelta"]; ok {
		return lossFromText(ApproxDP, epsilon, delta, "")
	}
	return lossFromText(PureDP, epsilon, "0", "")
}

// The kinds of Error, one per exception class of the Python client (lomas.client.errors).
var (
	// ErrUnauthenticated: no token, or one expired, malformed or not signed by the trusted issuer.
	ErrUnauthenticated = errors.New("lomas: unauthenticated")
	// ErrAccessDenied: no grant on the dataset, querying suspended, or an admin call without the
	// admin role.
	ErrAccessDenied = errors.New("lomas: access denied")
	// ErrBudgetExhausted: the query costs more than what is left; Metadata has requested and
	// remaining.
	ErrBudgetExhausted = errors.New("lomas: privacy budget exhausted")
	// ErrLimitExceeded: too many requests or concurrent queries for your user; retry later
	// (nothing spent).
	ErrLimitExceeded = errors.New("lomas: limit exceeded")
	// ErrInvalidQuery: the query is not valid for the dataset's metadata (nothing spent).
	ErrInvalidQuery = errors.New("lomas: invalid query")
	// ErrInvalidArgument: a parameter is malformed or out of range (nothing spent).
	ErrInvalidArgument = errors.New("lomas: invalid argument")
	// ErrNotFound: the named resource does not exist.
	ErrNotFound = errors.New("lomas: not found")
	// ErrAlreadyExists: a different resource with that name exists.
	ErrAlreadyExists = errors.New("lomas: already exists")
	// ErrBackendUnavailable: a platform service is down; retrying later with the same request id is
	// safe. Metadata names it under "peer" ("gateway" when the platform did not answer at all).
	ErrBackendUnavailable = errors.New("lomas: backend unavailable")
	// ErrQueryTimeout: the query did not finish in time; retry with the same request id to collect
	// its release.
	ErrQueryTimeout = errors.New("lomas: query timeout")
	// ErrExecutionFailed: the query failed after touching data and its cost is charged (no refund
	// after data access); Error.Charged says how much. A retry with the same request id returns the
	// same failure and charges nothing more.
	ErrExecutionFailed = errors.New("lomas: query execution failed")
	// ErrSourceUnavailable: the dataset's data cannot be read; nothing touched data, nothing is
	// charged. An administrator must fix the source.
	ErrSourceUnavailable = errors.New("lomas: dataset source unavailable")
	// ErrCostMismatch: the worker's cost of the query differed from what was reserved: nothing ran,
	// nothing was charged; sending the query again prices it anew.
	ErrCostMismatch = errors.New("lomas: cost mismatch")
)

// kindsByReason names the kind of each registry reason (lomas.common.v1.ErrorReason) that has one
// of its own; other reasons take the kind of their gRPC code (kindsByCode).
var kindsByReason = reasonKinds(map[commonv1.ErrorReason]error{
	commonv1.ErrorReason_ERROR_REASON_PRIVACY_BUDGET_EXHAUSTED:     ErrBudgetExhausted,
	commonv1.ErrorReason_ERROR_REASON_DATASET_CAP_EXHAUSTED:        ErrBudgetExhausted,
	commonv1.ErrorReason_ERROR_REASON_QUERY_INVALID:                ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_QUERY_TOO_LONG:               ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_QUERY_LIMIT_EXCEEDED:         ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_GROUP_KEYS_NOT_PUBLIC:        ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_OPENDP_PIPELINE_REFUSED:      ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_OPENDP_INPUT_DOMAIN_MISMATCH: ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_DELTA_REQUIRED:               ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_DELTA_TOO_LARGE:              ErrInvalidQuery,
	commonv1.ErrorReason_ERROR_REASON_QUERY_TIMEOUT:                ErrQueryTimeout,
	commonv1.ErrorReason_ERROR_REASON_QUERY_EXECUTION_FAILED:       ErrExecutionFailed,
	commonv1.ErrorReason_ERROR_REASON_QUERY_TIME_LIMIT_EXCEEDED:    ErrExecutionFailed,
	commonv1.ErrorReason_ERROR_REASON_BACKEND_UNAVAILABLE:          ErrBackendUnavailable,
	commonv1.ErrorReason_ERROR_REASON_RATE_LIMITED:                 ErrLimitExceeded,
	commonv1.ErrorReason_ERROR_REASON_TOO_MANY_CONCURRENT_QUERIES:  ErrLimitExceeded,
	commonv1.ErrorReason_ERROR_REASON_TOO_MANY_CONCURRENT_CALLS:    ErrLimitExceeded,
	commonv1.ErrorReason_ERROR_REASON_FREE_CALL_LIMIT_EXCEEDED:     ErrLimitExceeded,
	commonv1.ErrorReason_ERROR_REASON_FREE_CALLS_BUSY:              ErrLimitExceeded,
	commonv1.ErrorReason_ERROR_REASON_COST_MISMATCH:                ErrCostMismatch,
	commonv1.ErrorReason_ERROR_REASON_DATASET_SOURCE_UNAVAILABLE:   ErrSourceUnavailable,
})

var kindsByCode = map[codes.Code]error{
	codes.Unauthenticated:   ErrUnauthenticated,
	codes.PermissionDenied:  ErrAccessDenied,
	codes.ResourceExhausted: ErrLimitExceeded,
	codes.InvalidArgument:   ErrInvalidArgument,
	codes.NotFound:          ErrNotFound,
	codes.AlreadyExists:     ErrAlreadyExists,
	codes.Unavailable:       ErrBackendUnavailable,
	codes.DeadlineExceeded:  ErrQueryTimeout,
}

// reasonKinds keys the kinds by the reason text that ErrorInfo carries: the registry value's name
// without its ERROR_REASON_ prefix.
func reasonKinds(byValue map[commonv1.ErrorReason]error) map[string]error {
	byText := make(map[string]error, len(byValue))
	for value, kind := range byValue {
		byText[strings.TrimPrefix(value.String(), "ERROR_REASON_")] = kind
	}
	return byText
}

func codeName(c codes.Code) string {
	if name, ok := code.Code_name[int32(c)]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", uint32(c))
}

// fromRPCError turns what a gRPC call returned into an *Error (nil stays nil).
func fromRPCError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err) // CANCELLED or DEADLINE_EXCEEDED, else UNKNOWN
	}
	lomasError := &Error{
		Code:     st.Code(),
		Reason:   codeName(st.Code()),
		Message:  st.Message(),
		Metadata: map[string]string{},
	}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			lomasError.Reason = info.GetReason()
			for key, value := range info.GetMetadata() {
				lomasError.Metadata[key] = value
			}
		}
	}
	if _, named := lomasError.Metadata["peer"]; lomasError.Code == codes.Unavailable && !named {
		// No ErrorInfo: the platform did not answer at all, so the gateway (or the proxy in front
		// of it) is what was unavailable. Every outage the platform reports names its own peer.
		lomasError.Metadata["peer"] = "gateway"
	}
	lomasError.kind = kindsByReason[lomasError.Reason]
	if lomasError.kind == nil {
		lomasError.kind = kindsByCode[lomasError.Code]
	}
	return lomasError
}
