package lomas

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// refusal is the error a gRPC call returns when the platform refuses with this code and ErrorInfo.
func refusal(t *testing.T, code codes.Code, reason string, metadata map[string]string) error {
	t.Helper()
	st, err := status.New(code, "what happened").WithDetails(
		&errdetails.ErrorInfo{Reason: reason, Domain: "lomas.mesh", Metadata: metadata})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestErrorsTakeTheirKindFromTheReasonThenTheCode(t *testing.T) {
	cases := []struct {
		code   codes.Code
		reason string
		kind   error
	}{
		{codes.ResourceExhausted, "PRIVACY_BUDGET_EXHAUSTED", ErrBudgetExhausted},
		{codes.ResourceExhausted, "DATASET_CAP_EXHAUSTED", ErrBudgetExhausted},
		{codes.ResourceExhausted, "RATE_LIMITED", ErrLimitExceeded},
		{codes.ResourceExhausted, "SOMETHING_NEW", ErrLimitExceeded}, // by code
		{codes.InvalidArgument, "QUERY_INVALID", ErrInvalidQuery},
		{codes.InvalidArgument, "DELTA_TOO_LARGE", ErrInvalidQuery},
		{codes.InvalidArgument, "PAGE_TOKEN_INVALID", ErrInvalidArgument}, // by code
		{codes.PermissionDenied, "DATASET_ACCESS_DENIED", ErrAccessDenied},
		{codes.Unauthenticated, "TOKEN_INVALID", ErrUnauthenticated},
		{codes.NotFound, "DATASET_NOT_FOUND", ErrNotFound},
		{codes.AlreadyExists, "USER_EXISTS", ErrAlreadyExists},
		{codes.Unavailable, "BACKEND_UNAVAILABLE", ErrBackendUnavailable},
		{codes.DeadlineExceeded, "QUERY_TIMEOUT", ErrQueryTimeout},
		{codes.Internal, "QUERY_EXECUTION_FAILED", ErrExecutionFailed},
		{codes.FailedPrecondition, "DATASET_SOURCE_UNAVAILABLE", ErrSourceUnavailable},
		{codes.Aborted, "COST_MISMATCH", ErrCostMismatch},
		{codes.Internal, "INTERNAL", nil},
	}
	kinds := []error{ErrUnauthenticated, ErrAccessDenied, ErrBudgetExhausted, ErrLimitExceeded,
		ErrInvalidQuery, ErrInvalidArgument, ErrNotFound, ErrAlreadyExists, ErrBackendUnavailable,
		ErrQueryTimeout, ErrExecutionFailed, ErrSourceUnavailable, ErrCostMismatch}
	for _, c := range cases {
		err := fromRPCError(refusal(t, c.code, c.reason, map[string]string{"peer": "budget"}))
		var lomasError *Error
		if !errors.As(err, &lomasError) || lomasError.Code != c.code || lomasError.Reason != c.reason {
			t.Errorf("%v %s became %#v", c.code, c.reason, err)
			continue
		}
		for _, kind := range kinds {
			if errors.Is(err, kind) != (kind == c.kind) {
				t.Errorf("%v %s: errors.Is(err, %v) = %v", c.code, c.reason, kind, !(kind == c.kind))
			}
		}
	}
}

func TestAnErrorKeepsCodeNameReasonMessageAndMetadata(t *testing.T) {
	metadata := map[string]string{"requestedEpsilon": "1000", "remainingEpsilon": "9.5"}
	err := fromRPCError(refusal(t, codes.ResourceExhausted, "PRIVACY_BUDGET_EXHAUSTED", metadata))
	var lomasError *Error
	if !errors.As(err, &lomasError) {
		t.Fatalf("%#v is not an *Error", err)
	}
	if lomasError.CodeName() != "RESOURCE_EXHAUSTED" || lomasError.Message != "what happened" ||
		!reflect.DeepEqual(lomasError.Metadata, metadata) {
		t.Errorf("got %s %q %v", lomasError.CodeName(), lomasError.Message, lomasError.Metadata)
	}
	if err.Error() != "PRIVACY_BUDGET_EXHAUSTED: what happened" {
		t.Errorf("Error() = %q", err.Error())
	}
	// Wrapped further by the caller, it is still found.
	if wrapped := fmt.Errorf("step 6: %w", err); !errors.Is(wrapped, ErrBudgetExhausted) {
		t.Error("a wrapped Error lost its kind")
	}
}

func TestCodeNamesAreTheCanonicalOnes(t *testing.T) {
	for code, name := range map[codes.Code]string{
		codes.OK: "OK", codes.NotFound: "NOT_FOUND", codes.PermissionDenied: "PERMISSION_DENIED",
		codes.Unauthenticated: "UNAUTHENTICATED", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.Canceled: "CANCELLED", codes.Code(99): "CODE_99",
	} {
		if got := (&Error{Code: code}).CodeName(); got != name {
			t.Errorf("CodeName(%v) = %q, want %q", code, got, name)
		}
	}
}

func TestWithoutErrorInfoTheReasonIsTheCodeName(t *testing.T) {
	err := fromRPCError(status.Error(codes.Unavailable, "connection refused"))
	var lomasError *Error
	if !errors.As(err, &lomasError) || lomasError.Reason != "UNAVAILABLE" {
		t.Fatalf("got %#v", err)
	}
	// The platform did not answer at all: the gateway is what was unavailable.
	if lomasError.Metadata["peer"] != "gateway" || !errors.Is(err, ErrBackendUnavailable) {
		t.Errorf("metadata %v, kind %v", lomasError.Metadata, lomasError.Unwrap())
	}
	// An outage the platform reports names its own peer, which is kept.
	err = fromRPCError(refusal(t, codes.Unavailable, "BACKEND_UNAVAILABLE", map[string]string{"peer": "budget"}))
	if errors.As(err, &lomasError); lomasError.Metadata["peer"] != "budget" {
		t.Errorf("peer %q", lomasError.Metadata["peer"])
	}
}

func TestContextErrorsAndNilMap(t *testing.T) {
	if fromRPCError(nil) != nil {
		t.Error("nil became an error")
	}
	err := fromRPCError(context.DeadlineExceeded)
	var lomasError *Error
	if !errors.As(err, &lomasError) || lomasError.CodeName() != "DEADLINE_EXCEEDED" || !errors.Is(err, ErrQueryTimeout) {
		t.Errorf("context.DeadlineExceeded became %#v", err)
	}
	if again := fromRPCError(err); again != err {
		t.Error("an *Error was converted twice")
	}
}

func TestChargedReadsTheChargeOfAFailedQuery(t *testing.T) {
	cases := []struct {
		metadata map[string]string
		want     string
	}{
		{map[string]string{"chargedEpsilon": "0.5", "chargedDelta": "0.00001"}, "(epsilon=0.5, delta=0.00001)"},
		{map[string]string{"chargedEpsilon": "1"}, "(epsilon=1, delta=0)"},
		{map[string]string{"chargedRho": "0.125"}, "(rho=0.125)"},
	}
	for _, c := range cases {
		err := fromRPCError(refusal(t, codes.Internal, "QUERY_EXECUTION_FAILED", c.metadata))
		var lomasError *Error
		errors.As(err, &lomasError)
		charged, chargeErr := lomasError.Charged()
		if chargeErr != nil || charged.String() != c.want {
			t.Errorf("Charged() of %v = %v, %v; want %s", c.metadata, charged, chargeErr, c.want)
		}
	}
	if _, err := (&Error{Metadata: map[string]string{}}).Charged(); err == nil {
		t.Error("an error without a charge said one")
	}
}
