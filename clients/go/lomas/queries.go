package lomas

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	commonv1 "lomas-mesh/clients/go/lomas/common/v1"
	gatewayv1 "lomas-mesh/clients/go/lomas/gateway/v1"
)

// RunOptions say how a query runs (the Python client's keyword arguments of every `query`).
type RunOptions struct {
	// Dummy runs the query on seeded dummy data instead: free, nothing charged.
	Dummy bool
	// DummyRows (0 means 100, as in Python; otherwise at least 1) and DummySeed: the dummy data.
	DummyRows int32
	DummySeed int64
	// RequestID names this query, so that a retry with it returns the first answer and is never
	// charged twice; empty makes a new one for each real query.
	RequestID string
	// Fresh pays for a new draw of noise instead of a free replay of your earlier release of the
	// same query.
	Fresh bool
}

// Release is a DP release (or a dummy run's result): the table and what it cost.
type Release struct {
	Table
	QueryID string      // empty for a dummy run
	Cost    PrivacyLoss // charged (for a dummy run: what the real query costs)
	Replay  bool        // a free replay of your earlier release of the same query
	Dummy   bool
}

func (c *Client) estimate(ctx context.Context, query *commonv1.Query) (PrivacyLoss, error) {
	response, err := call(c, ctx, c.stub.EstimateQueryCost,
		&gatewayv1.EstimateQueryCostRequest{Dataset: c.Dataset, Query: query})
	if err != nil {
		return PrivacyLoss{}, err
	}
	return lossFromProto(response.GetCost())
}

func (c *Client) execute(ctx context.Context, query *commonv1.Query, run RunOptions) (*Release, error) {
	request := &gatewayv1.ExecuteQueryRequest{
		Dataset:   c.Dataset,
		Query:     query,
		Dummy:     run.Dummy,
		RequestId: run.RequestID,
		Fresh:     run.Fresh,
	}
	if run.Dummy {
		rows := run.DummyRows
		if rows == 0 {
			rows = 100
		}
		if err := checkDummyRows(rows); err != nil {
			return nil, err
		}
		request.DummyRowCount, request.DummySeed = rows, run.DummySeed
	} else if request.RequestId == "" {
		// Always send a request id, so that the transport's own retries can never charge twice.
		id, err := newRequestID()
		if err != nil {
			return nil, err
		}
		request.RequestId = id
	}
	response, err := call(c, ctx, c.stub.ExecuteQuery, request)
	if err != nil {
		return nil, err
	}
	cost, err := lossFromProto(response.GetCost())
	if err != nil {
		return nil, err
	}
	table, err := decodeTable(response.GetRelease())
	if err != nil {
		return nil, err
	}
	return &Release{
		Table:   table,
		QueryID: response.GetQueryId(),
		Cost:    cost,
		Replay:  response.GetReplay(),
		Dummy:   response.GetDummy(),
	}, nil
}

// newRequestID is a random (version 4) UUID.
func newRequestID() (string, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", err
	}
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:]), nil
}

// SmartnoiseSQLClient runs DP SQL with SmartNoise-SQL. The SQL names the table `df`, as in Lomas.
// Epsilon and delta are decimal strings ("0.5", "0.00001"): they are sent exactly as given.
type SmartnoiseSQLClient struct{ client *Client }

// SmartnoiseSQLOptions are the optional parts of a SmartNoise-SQL query and how it runs.
type SmartnoiseSQLOptions struct {
	// Mechanisms picks the mechanism per statistic, e.g. {"count": "gaussian"}.
	Mechanisms map[string]string
	// NoPostprocess returns the raw noisy aggregates (columns res_0, res_1...) instead of
	// SmartNoise-SQL's post-processed result (clamping, rounding, ordering, HAVING, LIMIT).
	NoPostprocess bool
	RunOptions
}

func smartnoiseSQLQuery(sql, epsilon, delta string, options SmartnoiseSQLOptions) *commonv1.Query {
	postprocess := !options.NoPostprocess
	return &commonv1.Query{Kind: &commonv1.Query_SmartnoiseSql{SmartnoiseSql: &commonv1.SmartnoiseSqlQuery{
		Sql:         sql,
		Epsilon:     epsilon,
		Delta:       delta,
		Mechanisms:  options.Mechanisms,
		Postprocess: &postprocess,
	}}}
}

// Cost is the exact cost the query would be charged (free; SmartNoise-SQL charges per mechanism).
func (s *SmartnoiseSQLClient) Cost(
	ctx context.Context, sql, epsilon, delta string, mechanisms map[string]string,
) (PrivacyLoss, error) {
	options := SmartnoiseSQLOptions{Mechanisms: mechanisms}
	return s.client.estimate(ctx, smartnoiseSQLQuery(sql, epsilon, delta, options))
}

// Query runs the query and returns the DP release. With Dummy it runs on seeded dummy data and
// costs nothing. Asking the same query again returns your earlier release for free (Replay): a
// release re-released is post-processing. Fresh pays for a new draw instead.
func (s *SmartnoiseSQLClient) Query(
	ctx context.Context, sql, epsilon, delta string, options SmartnoiseSQLOptions,
) (*Release, error) {
	return s.client.execute(ctx, smartnoiseSQLQuery(sql, epsilon, delta, options), options.RunOptions)
}

// OpenDPClient runs OpenDP pipelines, in the two forms Lomas accepts. Go cannot build them: send
// the JSON that OpenDP's and Polars' Python APIs write (see OpenDPPipeline).
type OpenDPClient struct{ client *Client }

// OpenDPPipeline is an OpenDP pipeline as JSON: exactly one of MeasurementJSON and PolarsPlanJSON.
type OpenDPPipeline struct {
	// MeasurementJSON is a Measurement as `dp.serialize` writes it. Its input is the dataset as CSV
	// text without a header line, columns in metadata order.
	MeasurementJSON string
	// PolarsPlanJSON is a Polars LazyFrame with OpenDP's `dp` expressions, as
	// `LazyFrame.serialize(format="json")` writes it with the Polars version the server pins.
	PolarsPlanJSON string
	// Mechanism is a Polars query's noise: "laplace" (the default: pure DP) or "gaussian" (zCDP).
	Mechanism string
	// GlobalScale scales a Polars query's expressions that set no scale ("" for none).
	GlobalScale string
	// Threshold is a Polars query's minimum group size when its group keys are not public.
	Threshold int64
	// FixedDelta turns a zCDP loss or a privacy curve into (epsilon, delta) at this delta ("" for
	// none; curves need it).
	FixedDelta string
}

var openDPMechanisms = map[string]commonv1.OpenDpMechanism{
	"":         commonv1.OpenDpMechanism_OPEN_DP_MECHANISM_LAPLACE,
	"laplace":  commonv1.OpenDpMechanism_OPEN_DP_MECHANISM_LAPLACE,
	"gaussian": commonv1.OpenDpMechanism_OPEN_DP_MECHANISM_GAUSSIAN,
}

func (p OpenDPPipeline) query() (*commonv1.Query, error) {
	opendp := &commonv1.OpenDpQuery{FixedDelta: p.FixedDelta}
	switch {
	case (p.MeasurementJSON == "") == (p.PolarsPlanJSON == ""):
		return nil, errors.New("lomas: give exactly one of MeasurementJSON and PolarsPlanJSON")
	case p.MeasurementJSON != "":
		opendp.Pipeline = &commonv1.OpenDpQuery_MeasurementJson{MeasurementJson: p.MeasurementJSON}
	default:
		mechanism, known := openDPMechanisms[p.Mechanism]
		if !known {
			return nil, fmt.Errorf("lomas: the mechanism must be laplace or gaussian, not %q", p.Mechanism)
		}
		opendp.Pipeline = &commonv1.OpenDpQuery_Polars{Polars: &commonv1.OpenDpPolarsQuery{
			PlanJson:    p.PolarsPlanJSON,
			Mechanism:   mechanism,
			GlobalScale: p.GlobalScale,
			Threshold:   p.Threshold,
		}}
	}
	return &commonv1.Query{Kind: &commonv1.Query_Opendp{Opendp: opendp}}, nil
}

// Cost is the exact cost the pipeline would be charged (free; nothing runs on the data).
func (o *OpenDPClient) Cost(ctx context.Context, pipeline OpenDPPipeline) (PrivacyLoss, error) {
	query, err := pipeline.query()
	if err != nil {
		return PrivacyLoss{}, err
	}
	return o.client.estimate(ctx, query)
}

// Query runs the pipeline and returns its DP release. A measurement's release is in column `value`
// (one row per element for a list; `key`/`value` for a map); a Polars query returns its frame.
func (o *OpenDPClient) Query(ctx context.Context, pipeline OpenDPPipeline, run RunOptions) (*Release, error) {
	query, err := pipeline.query()
	if err != nil {
		return nil, err
	}
	return o.client.execute(ctx, query, run)
}
