// Package lomas is the researcher's Go client of a Lomas mesh gateway: the Python client's
// vocabulary (lomas.client) over the same gRPC contracts, with exact budgets and typed errors.
//
//	client, err := lomas.NewClient("localhost:50051", "PENGUIN", token)
//	defer client.Close()
//	release, err := client.SmartnoiseSQL.Query(ctx, "SELECT COUNT(*) AS n FROM df", "0.5", "0.00001",
//		lomas.SmartnoiseSQLOptions{})
//	remaining, err := client.GetRemainingBudget(ctx)
//
// Every method returns an *Error (wrapping one of the Err* kinds) when the platform refuses.
package lomas

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"lomas-mesh/clients/go/arrowipc"
	commonv1 "lomas-mesh/clients/go/lomas/common/v1"
	gatewayv1 "lomas-mesh/clients/go/lomas/gateway/v1"
)

// Client is a researcher's connection to one dataset on a Lomas mesh gateway. It is safe for
// concurrent use.
type Client struct {
	Dataset string
	// SmartnoiseSQL runs DP SQL with SmartNoise-SQL; OpenDP runs OpenDP pipelines.
	SmartnoiseSQL *SmartnoiseSQLClient
	OpenDP        *OpenDPClient

	conn    *grpc.ClientConn
	stub    gatewayv1.GatewayServiceClient
	timeout time.Duration
}

type settings struct {
	transport       credentials.TransportCredentials
	timeout         time.Duration
	maxMessageBytes int
	dialOptions     []grpc.DialOption
}

// Option changes how NewClient connects.
type Option func(*settings)

// WithTransportCredentials connects over TLS (or any gRPC transport security); the default is
// plaintext, as the embedded platform serves.
func WithTransportCredentials(transport credentials.TransportCredentials) Option {
	return func(s *settings) { s.transport = transport }
}

// WithTimeout bounds each call whose context has no deadline (default 600 s, as in Python).
func WithTimeout(timeout time.Duration) Option {
	return func(s *settings) { s.timeout = timeout }
}

// WithMaxMessageBytes bounds the size of a message either way (default 64 MiB, as in Python).
func WithMaxMessageBytes(size int) Option {
	return func(s *settings) { s.maxMessageBytes = size }
}

// WithDialOptions adds gRPC dial options (interceptors, keepalive...).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, options...) }
}

// NewClient connects to the gateway at target ("host:port") for the dataset, with the caller's
// bearer token. The connection is made lazily, on the first call.
func NewClient(target, dataset, token string, options ...Option) (*Client, error) {
	if dataset == "" {
		return nil, errors.New("lomas: name the dataset: NewClient(target, dataset, token)")
	}
	if token == "" {
		return nil, errors.New("lomas: a token is required")
	}
	s := settings{timeout: 600 * time.Second, maxMessageBytes: 64 * 1024 * 1024}
	for _, option := range options {
		option(&s)
	}
	dialOptions := []grpc.DialOption{
		grpc.WithPerRPCCredentials(bearerToken{token: token, secure: s.transport != nil}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(s.maxMessageBytes), grpc.MaxCallSendMsgSize(s.maxMessageBytes)),
	}
	if s.transport != nil {
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(s.transport))
	} else {
		dialOptions = append(dialOptions, grpc.WithInsecure())
	}
	conn, err := grpc.Dial(target, append(dialOptions, s.dialOptions...)...)
	if err != nil {
		return nil, err
	}
	client := &Client{
		Dataset: dataset,
		conn:    conn,
		stub:    gatewayv1.NewGatewayServiceClient(conn),
		timeout: s.timeout,
	}
	client.SmartnoiseSQL = &SmartnoiseSQLClient{client}
	client.OpenDP = &OpenDPClient{client}
	return client, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// bearerToken sends `authorization: Bearer <token>` with every call.
type bearerToken struct {
	token  string
	secure bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false on plaintext connections only, which the caller chose.
func (b bearerToken) RequireTransportSecurity() bool { return b.secure }

// call makes one unary call with the client's default deadline and turns a failure into an *Error.
// (A server-streaming call would do the same for its opening and for each Recv.)
func call[Request, Response any](
	c *Client,
	ctx context.Context,
	method func(context.Context, Request, ...grpc.CallOption) (Response, error),
	request Request,
) (Response, error) {
	if _, hasDeadline := ctx.Deadline(); !hasDeadline {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	response, err := method(ctx, request)
	return response, fromRPCError(err)
}

// Datasets --------------------------------------------------------------------------------------

// ListDatasets is the names of the datasets you hold a grant on (every page).
func (c *Client) ListDatasets(ctx context.Context) ([]string, error) {
	var names []string
	token := ""
	for {
		response, err := call(c, ctx, c.stub.ListAccessibleDatasets,
			&gatewayv1.ListAccessibleDatasetsRequest{PageToken: token})
		if err != nil {
			return nil, err
		}
		names = append(names, response.GetDatasetNames()...)
		if token = response.GetNextPageToken(); token == "" {
			return names, nil
		}
	}
}

// GetDatasetMetadata is the dataset's metadata.
func (c *Client) GetDatasetMetadata(ctx context.Context) (*DatasetMetadata, error) {
	response, err := call(c, ctx, c.stub.GetDatasetMetadata,
		&gatewayv1.GetDatasetMetadataRequest{Dataset: c.Dataset})
	if err != nil {
		return nil, err
	}
	return parseMetadata(response.GetMetadataJson())
}

// Table is an Arrow IPC stream from the platform with what package arrowipc decodes of it: column
// names and types, the row count, and the values of simple columns. IPC is the stream as sent, for
// a full Arrow library.
type Table struct {
	*arrowipc.Table
	IPC []byte
}

func decodeTable(stream []byte) (Table, error) {
	table, err := arrowipc.Decode(stream)
	return Table{Table: table, IPC: stream}, err
}

// GetDummyDataset is seeded dummy data that follows the metadata (no private data, free): nbRows
// rows (at least 1); the same seed gives the same rows.
func (c *Client) GetDummyDataset(ctx context.Context, nbRows int32, seed int64) (Table, error) {
	if err := checkDummyRows(nbRows); err != nil {
		return Table{}, err
	}
	response, err := call(c, ctx, c.stub.GetDummyDataset,
		&gatewayv1.GetDummyDatasetRequest{Dataset: c.Dataset, RowCount: nbRows, Seed: seed})
	if err != nil {
		return Table{}, err
	}
	return decodeTable(response.GetArrowIpc())
}

// checkDummyRows refuses a row count below 1 before anything is sent: on the wire 0 means "the
// default" (an unset proto3 field), so asking for 0 rows would silently give 100.
func checkDummyRows(nbRows int32) error {
	if nbRows >= 1 {
		return nil
	}
	return &Error{
		Code:     codes.InvalidArgument,
		Reason:   "DUMMY_ROWS_OUT_OF_RANGE",
		Message:  "the number of dummy rows must be at least 1",
		Metadata: map[string]string{},
		kind:     ErrInvalidArgument,
	}
}

// Budget --------------------------------------------------------------------------------------

// Budget is your budget on the dataset.
type Budget struct {
	Definition Definition
	Initial    PrivacyLoss // granted
	Spent      PrivacyLoss // charged so far
	Reserved   PrivacyLoss // held by queries in flight
	Remaining  PrivacyLoss // Initial - Spent - Reserved
	// RemainingAtDelta is Remaining as (epsilon, delta) at the delta GetBudget was asked for
	// (zCDP and pure-DP budgets), rounded down; nil when not asked or not defined.
	RemainingAtDelta *PrivacyLoss
}

// GetBudget is your whole budget on the dataset in one call. atDelta ("" for none) is a decimal
// delta at which to also show the remaining budget as (epsilon, delta).
func (c *Client) GetBudget(ctx context.Context, atDelta string) (*Budget, error) {
	response, err := call(c, ctx, c.stub.GetBudget,
		&gatewayv1.GetBudgetRequest{Dataset: c.Dataset, Delta: atDelta})
	if err != nil {
		return nil, err
	}
	budget := &Budget{}
	for _, part := range []struct {
		loss  *commonv1.PrivacyLoss
		value *PrivacyLoss
	}{
		{response.GetInitial(), &budget.Initial},
		{response.GetSpent(), &budget.Spent},
		{response.GetReserved(), &budget.Reserved},
		{response.GetRemaining(), &budget.Remaining},
	} {
		if *part.value, err = lossFromProto(part.loss); err != nil {
			return nil, err
		}
	}
	budget.Definition = budget.Initial.Definition
	if at := response.GetRemainingAtDelta(); at != nil {
		loss, err := lossFromText(ApproxDP, at.GetEpsilon(), at.GetDelta(), "")
		if err != nil {
			return nil, err
		}
		budget.RemainingAtDelta = &loss
	}
	return budget, nil
}

// GetInitialBudget is the budget granted.
func (c *Client) GetInitialBudget(ctx context.Context) (PrivacyLoss, error) {
	budget, err := c.GetBudget(ctx, "")
	if err != nil {
		return PrivacyLoss{}, err
	}
	return budget.Initial, nil
}

// GetTotalSpentBudget is the budget charged so far.
func (c *Client) GetTotalSpentBudget(ctx context.Context) (PrivacyLoss, error) {
	budget, err := c.GetBudget(ctx, "")
	if err != nil {
		return PrivacyLoss{}, err
	}
	return budget.Spent, nil
}

// GetRemainingBudget is what is left.
func (c *Client) GetRemainingBudget(ctx context.Context) (PrivacyLoss, error) {
	budget, err := c.GetBudget(ctx, "")
	if err != nil {
		return PrivacyLoss{}, err
	}
	return budget.Remaining, nil
}

// Archive -------------------------------------------------------------------------------------

// PreviousQuery is one of your previous real queries on the dataset.
type PreviousQuery struct {
	QueryID     string
	Dataset     string
	QueryKind   string          // "smartnoise_sql", "opendp"
	Query       *commonv1.Query // the query as sent
	Cost        PrivacyLoss
	Result      *Table // the release; nil for a failed query
	ErrorReason string // for a failed query
	SubmittedAt time.Time
}

// GetPreviousQueries is your previous real queries on this dataset, newest first, with their
// releases (every page).
func (c *Client) GetPreviousQueries(ctx context.Context) ([]PreviousQuery, error) {
	var queries []PreviousQuery
	token := ""
	for {
		response, err := call(c, ctx, c.stub.ListQueries,
			&gatewayv1.ListQueriesRequest{Dataset: c.Dataset, PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, q := range response.GetQueries() {
			previous, err := previousQuery(q)
			if err != nil {
				return nil, err
			}
			queries = append(queries, previous)
		}
		if token = response.GetNextPageToken(); token == "" {
			return queries, nil
		}
	}
}

func previousQuery(q *gatewayv1.PreviousQuery) (PreviousQuery, error) {
	cost, err := lossFromProto(q.GetCost())
	if err != nil {
		return PreviousQuery{}, err
	}
	previous := PreviousQuery{
		QueryID:     q.GetQueryId(),
		Dataset:     q.GetDataset(),
		QueryKind:   queryKind(q.GetQuery()),
		Query:       q.GetQuery(),
		Cost:        cost,
		ErrorReason: q.GetErrorReason(),
		SubmittedAt: q.GetSubmitTime().AsTime(),
	}
	if len(q.GetRelease()) > 0 {
		result, err := decodeTable(q.GetRelease())
		if err != nil {
			return PreviousQuery{}, err
		}
		previous.Result = &result
	}
	return previous, nil
}

// queryKind is the name of the field set in Query's `kind` oneof ("" when none is).
func queryKind(query *commonv1.Query) string {
	if query == nil {
		return ""
	}
	message := query.ProtoReflect()
	kind := message.Descriptor().Oneofs().ByName("kind")
	if field := message.WhichOneof(kind); field != nil {
		return string(field.Name())
	}
	return ""
}
