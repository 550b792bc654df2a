// Command lomas-scenario plays the shared researcher scenario (clients/SCENARIO.md) with the Go
// client's public API and prints the observation as JSON, as the Python and TypeScript runners do:
//
//	clients/go/bin/lomas-scenario ENV.json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"lomas-mesh/clients/go/lomas"
)

// environment is the file the parity test writes (clients/SCENARIO.md).
type environment struct {
	Target           string `json:"target"`
	Token            string `json:"token"`
	InvalidToken     string `json:"invalid_token"`
	Dataset          string `json:"dataset"`
	UnknownDataset   string `json:"unknown_dataset"`
	ForbiddenDataset string `json:"forbidden_dataset"`
	SQL              string `json:"sql"`
	Epsilon          string `json:"epsilon"`
	Delta            string `json:"delta"`
	ExhaustingEps    string `json:"exhausting_epsilon"`
	InvalidSQL       string `json:"invalid_sql"`
	DummyRows        int32  `json:"dummy_rows"`
	DummySeed        int64  `json:"dummy_seed"`
}

type object = map[string]any // JSON objects: encoding/json writes their keys sorted, as Python does

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lomas-scenario ENV.json")
		os.Exit(2)
	}
	observation, err := run(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lomas-scenario:", err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	out.SetEscapeHTML(false)
	if err := out.Encode(observation); err != nil {
		fmt.Fprintln(os.Stderr, "lomas-scenario:", err)
		os.Exit(1)
	}
}

func run(envPath string) (object, error) {
	text, err := os.ReadFile(envPath)
	if err != nil {
		return nil, err
	}
	var env environment
	if err := json.Unmarshal(text, &env); err != nil {
		return nil, fmt.Errorf("%s: %w", envPath, err)
	}
	ctx := context.Background()
	client, err := lomas.NewClient(env.Target, env.Dataset, env.Token)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	observation := object{}

	datasets, err := client.ListDatasets(ctx)
	if err != nil {
		return nil, fmt.Errorf("datasets: %w", err)
	}
	sort.Strings(datasets)
	observation["datasets"] = datasets

	metadata, err := client.GetDatasetMetadata(ctx)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	columns := metadata.ColumnNames()
	sort.Strings(columns)
	observation["metadata"] = object{"max_ids": metadata.MaxIDs, "columns": columns}

	dummy, err := client.GetDummyDataset(ctx, env.DummyRows, env.DummySeed)
	if err != nil {
		return nil, fmt.Errorf("dummy: %w", err)
	}
	observation["dummy"] = object{"rows": dummy.Rows, "columns": dummy.ColumnNames()}

	cost, err := client.SmartnoiseSQL.Cost(ctx, env.SQL, env.Epsilon, env.Delta, nil)
	if err != nil {
		return nil, fmt.Errorf("cost: %w", err)
	}
	if observation["cost"], err = loss(cost); err != nil {
		return nil, err
	}

	if observation["budget_before"], err = budget(ctx, client); err != nil {
		return nil, fmt.Errorf("budget_before: %w", err)
	}

	release, err := client.SmartnoiseSQL.Query(ctx, env.SQL, env.Epsilon, env.Delta, lomas.SmartnoiseSQLOptions{})
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	releaseCost, err := loss(release.Cost)
	if err != nil {
		return nil, err
	}
	observation["query"] = object{"columns": release.ColumnNames(), "rows": release.Rows, "cost": releaseCost}

	if observation["budget_after"], err = budget(ctx, client); err != nil {
		return nil, fmt.Errorf("budget_after: %w", err)
	}

	previous, err := client.GetPreviousQueries(ctx)
	if err != nil {
		return nil, fmt.Errorf("previous_queries: %w", err)
	}
	costs := []object{}
	for _, query := range previous {
		queryCost, err := loss(query.Cost)
		if err != nil {
			return nil, err
		}
		costs = append(costs, queryCost)
	}
	observation["previous_queries"] = object{"count": len(previous), "costs": costs}

	refusals := object{}
	for _, refusal := range []struct {
		name string
		call func() error
	}{
		{"unknown_dataset", func() error {
			return withClient(env.Target, env.UnknownDataset, env.Token, func(other *lomas.Client) error {
				_, err := other.GetDatasetMetadata(ctx)
				return err
			})
		}},
		{"no_access", func() error {
			return withClient(env.Target, env.ForbiddenDataset, env.Token, func(other *lomas.Client) error {
				_, err := other.GetDatasetMetadata(ctx)
				return err
			})
		}},
		{"budget_exhausted", func() error {
			_, err := client.SmartnoiseSQL.Query(ctx, env.SQL, env.ExhaustingEps, env.Delta, lomas.SmartnoiseSQLOptions{})
			return err
		}},
		{"invalid_sql", func() error {
			_, err := client.SmartnoiseSQL.Cost(ctx, env.InvalidSQL, env.Epsilon, env.Delta, nil)
			return err
		}},
		{"invalid_token", func() error {
			return withClient(env.Target, env.Dataset, env.InvalidToken, func(other *lomas.Client) error {
				_, err := other.GetRemainingBudget(ctx)
				return err
			})
		}},
	} {
		err := refusal.call()
		var refused *lomas.Error
		if !errors.As(err, &refused) {
			return nil, fmt.Errorf("%s: a call the scenario expects to be refused gave %v", refusal.name, err)
		}
		refusals[refusal.name] = object{"code": refused.CodeName(), "reason": refused.Reason}
	}
	observation["refusals"] = refusals
	return observation, nil
}

// loss is a privacy loss as the observation writes it: decimal strings, as Python prints them.
func loss(l lomas.PrivacyLoss) (object, error) {
	if l.Definition == lomas.RhoZCDP {
		return nil, fmt.Errorf("a zCDP loss %v where the scenario expects (epsilon, delta)", l)
	}
	return object{"epsilon": l.Epsilon.String(), "delta": l.Delta.String()}, nil
}

func budget(ctx context.Context, client *lomas.Client) (object, error) {
	parts := object{}
	for _, part := range []struct {
		name string
		get  func(context.Context) (lomas.PrivacyLoss, error)
	}{
		{"initial", client.GetInitialBudget},
		{"spent", client.GetTotalSpentBudget},
		{"remaining", client.GetRemainingBudget},
	} {
		value, err := part.get(ctx)
		if err != nil {
			return nil, err
		}
		if parts[part.name], err = loss(value); err != nil {
			return nil, err
		}
	}
	return parts, nil
}

func withClient(target, dataset, token string, use func(*lomas.Client) error) error {
	client, err := lomas.NewClient(target, dataset, token)
	if err != nil {
		return err
	}
	defer client.Close()
	return use(client)
}
