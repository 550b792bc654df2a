package arrowipc

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The streams in testdata/ are written by pyarrow (testdata/make_streams.py).

func decodeFile(t *testing.T, name string) *Table {
	t.Helper()
	stream, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	table, err := Decode(stream)
	if err != nil {
		t.Fatalf("Decode(%s): %v", name, err)
	}
	return table
}

var simpleFields = []Field{
	{Name: "species", Type: "utf8", Nullable: true},
	{Name: "bill_length_mm", Type: "float64", Nullable: true},
	{Name: "n", Type: "int64", Nullable: true},
	{Name: "flag", Type: "bool", Nullable: true},
	{Name: "small", Type: "uint8", Nullable: true},
	{Name: "tiny", Type: "int8", Nullable: true},
	{Name: "ratio", Type: "float32", Nullable: true},
	{Name: "long_text", Type: "large_utf8", Nullable: true},
}

var simpleColumns = [][]any{
	{"Adelie", nil, "Gentoo", "Chinstrap", ""},
	{39.1, 39.5, nil, -1.5, 0.0},
	{int64(3), int64(-2), int64(0), int64(1 << 40), int64(-1 << 63)},
	{true, false, nil, true, true},
	{uint64(0), uint64(255), uint64(7), nil, uint64(1)},
	{int64(-128), int64(127), int64(-1), int64(0), nil},
	{0.5, 0.25, nil, 1.0, -2.0},
	{"a", "bc", nil, "déf", ""},
}

func TestSchemaRowsAndValues(t *testing.T) {
	// simple.arrows has three record batches (2, 2 and 1 rows); the legacy one has one batch and no
	// continuation markers.
	for _, name := range []string{"simple.arrows", "simple_legacy.arrows"} {
		table := decodeFile(t, name)
		if !reflect.DeepEqual(table.Fields, simpleFields) {
			t.Errorf("%s: fields %+v", name, table.Fields)
		}
		if table.Rows != 5 {
			t.Errorf("%s: %d rows, want 5", name, table.Rows)
		}
		for i, want := range simpleColumns {
			values, err := table.Column(i)
			if err != nil || !reflect.DeepEqual(values, want) {
				t.Errorf("%s: column %d = %#v, %v; want %#v", name, i, values, err, want)
			}
		}
	}
}

func TestColumnNamesInSchemaOrder(t *testing.T) {
	names := decodeFile(t, "simple.arrows").ColumnNames()
	want := []string{"species", "bill_length_mm", "n", "flag", "small", "tiny", "ratio", "long_text"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("ColumnNames() = %v, want %v", names, want)
	}
}

func TestSchemaOnlyStreamHasNoRows(t *testing.T) {
	table := decodeFile(t, "schema_only.arrows")
	if table.Rows != 0 || !reflect.DeepEqual(table.ColumnNames(), []string{"species", "n"}) {
		t.Errorf("got %d rows, columns %v", table.Rows, table.ColumnNames())
	}
	if values, err := table.Column(1); err != nil || len(values) != 0 {
		t.Errorf("Column(1) = %v, %v; want no values", values, err)
	}
}

func TestEmptyInputIsAnEmptyTable(t *testing.T) {
	table, err := Decode(nil)
	if err != nil || table.Rows != 0 || len(table.Fields) != 0 {
		t.Errorf("Decode(nil) = %+v, %v", table, err)
	}
}

func TestCompressedBodiesKeepNamesAndRows(t *testing.T) {
	table := decodeFile(t, "simple_lz4.arrows")
	if table.Rows != 5 || !reflect.DeepEqual(table.Fields, simpleFields) {
		t.Errorf("got %d rows, fields %+v", table.Rows, table.Fields)
	}
	if _, err := table.Column(0); err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("Column(0) error = %v, want one about compression", err)
	}
}

func TestColumnsAfterNestedAndDictionaryColumnsAreLocated(t *testing.T) {
	table := decodeFile(t, "nested.arrows")
	wantFields := []Field{
		{Name: "point", Type: "struct", Nullable: true},
		{Name: "values", Type: "list", Nullable: true},
		{Name: "when", Type: "timestamp", Nullable: true},
		{Name: "category", Type: "utf8", Nullable: true, Dictionary: true},
		{Name: "n", Type: "int32", Nullable: true},
	}
	if table.Rows != 2 || !reflect.DeepEqual(table.Fields, wantFields) {
		t.Errorf("got %d rows, fields %+v", table.Rows, table.Fields)
	}
	for i := 0; i < 4; i++ {
		if _, err := table.Column(i); err == nil {
			t.Errorf("Column(%d) of type %s decoded; want an error", i, table.Fields[i].Type)
		}
	}
	if values, err := table.Column(4); err != nil || !reflect.DeepEqual(values, []any{int64(10), int64(20)}) {
		t.Errorf("Column(4) = %v, %v", values, err)
	}
}

func TestColumnsAfterAViewColumnAreNotGuessed(t *testing.T) {
	table := decodeFile(t, "views.arrows")
	if table.Rows != 2 || !reflect.DeepEqual(table.ColumnNames(), []string{"view", "n"}) {
		t.Errorf("got %d rows, columns %v", table.Rows, table.ColumnNames())
	}
	if _, err := table.Column(1); err == nil {
		t.Error("a column after a view column decoded; its buffers cannot be located")
	}
}

func TestMalformedStreamsAreErrorsNotPanics(t *testing.T) {
	stream, err := os.ReadFile(filepath.Join("testdata", "simple.arrows"))
	if err != nil {
		t.Fatal(err)
	}
	// Every truncation either decodes (the cut fell between messages) or fails cleanly.
	for size := 1; size < len(stream); size++ {
		if table, err := Decode(stream[:size]); err == nil && table.Rows > 5 {
			t.Fatalf("a truncated stream of %d bytes decoded to %d rows", size, table.Rows)
		}
	}
	// So does every single corrupted byte.
	for at := range stream {
		corrupted := append([]byte(nil), stream...)
		corrupted[at] ^= 0xA5
		_, _ = Decode(corrupted)
	}
	for _, garbage := range [][]byte{{0xFF}, {0xFF, 0xFF, 0xFF, 0xFF, 8, 0, 0, 0}, []byte("not an arrow stream")} {
		if _, err := Decode(garbage); err == nil {
			t.Errorf("Decode(%q) succeeded", garbage)
		}
	}
}

func TestAStreamMustStartWithItsSchema(t *testing.T) {
	if _, err := Decode([]byte{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}); err == nil {
		t.Error("an end-of-stream marker alone decoded")
	}
}
