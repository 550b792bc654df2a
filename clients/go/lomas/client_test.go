package lomas

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"reflect"
	"regexp"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "lomas-mesh/clients/go/lomas/common/v1"
	gatewayv1 "lomas-mesh/clients/go/lomas/gateway/v1"
)

// fakeGateway answers the way the gateway does, in memory, and records what it was sent. The
// client's behaviour against the real platform is tested by tests/e2e/test_client_parity.py; this
// covers what that scenario cannot make happen (several pages, a missing token, request ids).
type fakeGateway struct {
	gatewayv1.UnimplementedGatewayServiceServer
	release []byte

	mu       sync.Mutex
	requests []*gatewayv1.ExecuteQueryRequest
	calls    int
}

func (g *fakeGateway) authorize(ctx context.Context) error {
	g.mu.Lock()
	g.calls++
	g.mu.Unlock()
	md, _ := metadata.FromIncomingContext(ctx)
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer good-token" {
		st, _ := status.New(codes.Unauthenticated, "invalid token").WithDetails(
			&errdetails.ErrorInfo{Reason: "TOKEN_INVALID", Domain: "lomas.mesh"})
		return st.Err()
	}
	return nil
}

func (g *fakeGateway) ListAccessibleDatasets(ctx context.Context, request *gatewayv1.ListAccessibleDatasetsRequest) (*gatewayv1.ListAccessibleDatasetsResponse, error) {
	if err := g.authorize(ctx); err != nil {
		return nil, err
	}
	pages := map[string]*gatewayv1.ListAccessibleDatasetsResponse{
		"":   {DatasetNames: []string{"IRIS", "PENGUIN"}, NextPageToken: "p2"},
		"p2": {DatasetNames: []string{"TITANIC"}},
	}
	return pages[request.GetPageToken()], nil
}

func (g *fakeGateway) GetDatasetMetadata(ctx context.Context, request *gatewayv1.GetDatasetMetadataRequest) (*gatewayv1.GetDatasetMetadataResponse, error) {
	if err := g.authorize(ctx); err != nil {
		return nil, err
	}
	return &gatewayv1.GetDatasetMetadataResponse{MetadataJson: `{"max_ids": 1, "rows": 344, "row_privacy": true,
		"columns": {"species": {"type": "string", "categories": ["Adelie"]}, "bill_length_mm": {"type": "float", "lower": 30.0, "upper": 65.5}}}`}, nil
}

func approx(epsilon, delta string) *commonv1.PrivacyLoss {
	return &commonv1.PrivacyLoss{Loss: &commonv1.PrivacyLoss_ApproxDp{ApproxDp: &commonv1.ApproxDp{Epsilon: epsilon, Delta: delta}}}
}

func (g *fakeGateway) GetBudget(ctx context.Context, request *gatewayv1.GetBudgetRequest) (*gatewayv1.GetBudgetResponse, error) {
	if err := g.authorize(ctx); err != nil {
		return nil, err
	}
	return &gatewayv1.GetBudgetResponse{
		Initial:   approx("10", "0.005"),
		Spent:     approx("0.5", "0.00001"),
		Reserved:  &commonv1.PrivacyLoss{Loss: &commonv1.PrivacyLoss_PureDp{PureDp: &commonv1.PureDp{Epsilon: "0"}}},
		Remaining: approx("9.5", "0.00499"),
	}, nil
}

func (g *fakeGateway) ExecuteQuery(ctx context.Context, request *gatewayv1.ExecuteQueryRequest) (*gatewayv1.ExecuteQueryResponse, error) {
	if err := g.authorize(ctx); err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.requests = append(g.requests, request)
	g.mu.Unlock()
	return &gatewayv1.ExecuteQueryResponse{QueryId: "q1", Release: g.release, Cost: approx("0.5", "1E-5")}, nil
}

func (g *fakeGateway) ListQueries(ctx context.Context, request *gatewayv1.ListQueriesRequest) (*gatewayv1.ListQueriesResponse, error) {
	if err := g.authorize(ctx); err != nil {
		return nil, err
	}
	query := &commonv1.Query{Kind: &commonv1.Query_SmartnoiseSql{SmartnoiseSql: &commonv1.SmartnoiseSqlQuery{Sql: "SELECT 1"}}}
	if request.GetPageToken() == "" {
		return &gatewayv1.ListQueriesResponse{NextPageToken: "next", Queries: []*gatewayv1.PreviousQuery{
			{QueryId: "q2", Query: query, Cost: approx("1", "0"), Release: g.release, SubmitTime: timestamppb.Now()},
		}}, nil
	}
	return &gatewayv1.ListQueriesResponse{Queries: []*gatewayv1.PreviousQuery{
		{QueryId: "q1", Query: query, Cost: approx("0.5", "0.00001"), ErrorReason: "QUERY_EXECUTION_FAILED"},
	}}, nil
}

// connect starts the fake gateway in memory and a client of it with the token.
func connect(t *testing.T, token string) (*Client, *fakeGateway) {
	t.Helper()
	release, err := os.ReadFile("../arrowipc/testdata/simple.arrows")
	if err != nil {
		t.Fatal(err)
	}
	gateway := &fakeGateway{release: release}
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer()
	gatewayv1.RegisterGatewayServiceServer(server, gateway)
	go server.Serve(listener)
	t.Cleanup(server.Stop)
	dial := grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return listener.Dial() })
	client, err := NewClient("bufnet", "PENGUIN", token, WithDialOptions(dial))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client, gateway
}

func TestListDatasetsReadsEveryPage(t *testing.T) {
	client, _ := connect(t, "good-token")
	names, err := client.ListDatasets(context.Background())
	if err != nil || !reflect.DeepEqual(names, []string{"IRIS", "PENGUIN", "TITANIC"}) {
		t.Errorf("ListDatasets() = %v, %v", names, err)
	}
}

func TestEveryCallCarriesTheBearerToken(t *testing.T) {
	client, _ := connect(t, "stolen-token")
	_, err := client.GetRemainingBudget(context.Background())
	var lomasError *Error
	if !errors.As(err, &lomasError) || !errors.Is(err, ErrUnauthenticated) || lomasError.Reason != "TOKEN_INVALID" {
		t.Errorf("a bad token gave %#v", err)
	}
}

func TestMetadataKeepsTheColumnOrder(t *testing.T) {
	client, _ := connect(t, "good-token")
	metadata, err := client.GetDatasetMetadata(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if metadata.MaxIDs != 1 || metadata.Rows != 344 || !metadata.RowPrivacy ||
		!reflect.DeepEqual(metadata.ColumnNames(), []string{"species", "bill_length_mm"}) {
		t.Errorf("got %+v", metadata)
	}
	// Numbers stay as written (json.Number), never rounded through a float.
	if metadata.Columns[1].Type != "float" || metadata.Columns[1].Properties["upper"] != json.Number("65.5") {
		t.Errorf("column entry %v", metadata.Columns[1])
	}
}

func TestBudgetsAreExact(t *testing.T) {
	client, _ := connect(t, "good-token")
	budget, err := client.GetBudget(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if budget.Definition != ApproxDP || budget.Initial.String() != "(epsilon=10, delta=0.005)" ||
		budget.Spent.String() != "(epsilon=0.5, delta=0.00001)" || budget.Reserved.Definition != PureDP ||
		budget.Reserved.Delta.String() != "0" || budget.RemainingAtDelta != nil {
		t.Errorf("got %+v", budget)
	}
	remaining, err := client.GetRemainingBudget(context.Background())
	if err != nil || remaining.Epsilon.String() != "9.5" || remaining.Delta.String() != "0.00499" {
		t.Errorf("GetRemainingBudget() = %v, %v", remaining, err)
	}
}

func TestARealQueryAlwaysSendsARequestID(t *testing.T) {
	client, gateway := connect(t, "good-token")
	ctx := context.Background()
	release, err := client.SmartnoiseSQL.Query(ctx, "SELECT COUNT(*) AS n FROM df", "0.5", "0.00001", SmartnoiseSQLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if release.QueryID != "q1" || release.Cost.Delta.String() != "0.00001" || release.Rows != 5 || release.ColumnNames()[0] != "species" {
		t.Errorf("got release %+v", release)
	}
	if _, err := client.SmartnoiseSQL.Query(ctx, "SELECT 1", "1", "0", SmartnoiseSQLOptions{RunOptions: RunOptions{RequestID: "mine"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SmartnoiseSQL.Query(ctx, "SELECT 1", "1", "0", SmartnoiseSQLOptions{RunOptions: RunOptions{Dummy: true}}); err != nil {
		t.Fatal(err)
	}
	uuid4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	first, second, dummy := gateway.requests[0], gateway.requests[1], gateway.requests[2]
	if !uuid4.MatchString(first.GetRequestId()) || second.GetRequestId() != "mine" {
		t.Errorf("request ids %q, %q", first.GetRequestId(), second.GetRequestId())
	}
	sql := first.GetQuery().GetSmartnoiseSql()
	if sql.GetEpsilon() != "0.5" || sql.GetDelta() != "0.00001" || !sql.GetPostprocess() {
		t.Errorf("sent %v", sql)
	}
	if !dummy.GetDummy() || dummy.GetDummyRowCount() != 100 || dummy.GetRequestId() != "" {
		t.Errorf("dummy run sent %v", dummy)
	}
}

func TestZeroDummyRowsAreRefusedBeforeSending(t *testing.T) {
	client, gateway := connect(t, "good-token")
	_, err := client.GetDummyDataset(context.Background(), 0, 42)
	var lomasError *Error
	if !errors.As(err, &lomasError) || lomasError.Reason != "DUMMY_ROWS_OUT_OF_RANGE" || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("0 rows gave %#v", err)
	}
	if gateway.calls != 0 {
		t.Errorf("%d calls reached the gateway", gateway.calls)
	}
}

func TestPreviousQueriesReadEveryPage(t *testing.T) {
	client, _ := connect(t, "good-token")
	previous, err := client.GetPreviousQueries(context.Background())
	if err != nil || len(previous) != 2 {
		t.Fatalf("GetPreviousQueries() = %v, %v", previous, err)
	}
	first, second := previous[0], previous[1]
	if first.QueryID != "q2" || first.QueryKind != "smartnoise_sql" || first.Result == nil || first.Result.Rows != 5 || first.SubmittedAt.IsZero() {
		t.Errorf("first %+v", first)
	}
	if second.Result != nil || second.ErrorReason != "QUERY_EXECUTION_FAILED" || second.Cost.Epsilon.String() != "0.5" {
		t.Errorf("second %+v", second)
	}
}

func TestOpenDPPipelinesNeedExactlyOneForm(t *testing.T) {
	for _, pipeline := range []OpenDPPipeline{{}, {MeasurementJSON: "{}", PolarsPlanJSON: "{}"}, {PolarsPlanJSON: "{}", Mechanism: "uniform"}} {
		if _, err := pipeline.query(); err == nil {
			t.Errorf("%+v was accepted", pipeline)
		}
	}
	query, err := OpenDPPipeline{PolarsPlanJSON: "{}", Mechanism: "gaussian", Threshold: 5}.query()
	if err != nil || query.GetOpendp().GetPolars().GetMechanism() != commonv1.OpenDpMechanism_OPEN_DP_MECHANISM_GAUSSIAN || queryKind(query) != "opendp" {
		t.Errorf("got %v, %v", query, err)
	}
}
