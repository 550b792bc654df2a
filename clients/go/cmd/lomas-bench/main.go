// Command lomas-bench times one SmartNoise-SQL query through the Go client, for
// bench/client_latency.py (which runs the same loop through the Python and TypeScript clients):
//
//	lomas-bench LOOP.json
//
// LOOP.json: target, token, dataset, sql, epsilon, delta, runs. After a call that opens the
// connection, it times the first query (charged), `runs` repeats of it (free replays of that
// release) and `runs` repeats with Fresh (each a new, charged draw), and prints the milliseconds
// as JSON with how many answers were replays.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"lomas-mesh/clients/go/lomas"
)

type loop struct {
	Target  string `json:"target"`
	Token   string `json:"token"`
	Dataset string `json:"dataset"`
	SQL     string `json:"sql"`
	Epsilon string `json:"epsilon"`
	Delta   string `json:"delta"`
	Runs    int    `json:"runs"`
}

type timings struct {
	FirstMs      float64   `json:"first_ms"`
	ReplayMs     []float64 `json:"replay_ms"`
	FreshMs      []float64 `json:"fresh_ms"`
	Replays      int       `json:"replays"`       // answers of the replay phase that were replays
	FreshReplays int       `json:"fresh_replays"` // answers of the fresh phase that were (none should be)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lomas-bench LOOP.json")
		os.Exit(2)
	}
	out, err := run(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lomas-bench:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "lomas-bench:", err)
		os.Exit(1)
	}
}

func run(loopPath string) (*timings, error) {
	text, err := os.ReadFile(loopPath)
	if err != nil {
		return nil, err
	}
	var spec loop
	if err := json.Unmarshal(text, &spec); err != nil {
		return nil, fmt.Errorf("%s: %w", loopPath, err)
	}
	client, err := lomas.NewClient(spec.Target, spec.Dataset, spec.Token)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	ctx := context.Background()
	if _, err := client.ListDatasets(ctx); err != nil { // opens the connection, untimed
		return nil, err
	}

	// One query, timed in milliseconds; whether the answer was a replay.
	query := func(fresh bool) (float64, bool, error) {
		options := lomas.SmartnoiseSQLOptions{RunOptions: lomas.RunOptions{Fresh: fresh}}
		started := time.Now()
		release, err := client.SmartnoiseSQL.Query(ctx, spec.SQL, spec.Epsilon, spec.Delta, options)
		elapsed := float64(time.Since(started).Nanoseconds()) / 1e6
		if err != nil {
			return 0, false, err
		}
		return elapsed, release.Replay, nil
	}
	out := &timings{}
	if out.FirstMs, _, err = query(false); err != nil {
		return nil, fmt.Errorf("first query: %w", err)
	}
	for i := 0; i < spec.Runs; i++ {
		elapsed, replay, err := query(false)
		if err != nil {
			return nil, fmt.Errorf("replay %d: %w", i, err)
		}
		out.ReplayMs = append(out.ReplayMs, elapsed)
		if replay {
			out.Replays++
		}
	}
	for i := 0; i < spec.Runs; i++ {
		elapsed, replay, err := query(true)
		if err != nil {
			return nil, fmt.Errorf("fresh %d: %w", i, err)
		}
		out.FreshMs = append(out.FreshMs, elapsed)
		if replay {
			out.FreshReplays++
		}
	}
	return out, nil
}
