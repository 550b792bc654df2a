package lomas

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// DatasetMetadata is a dataset's metadata: the document Lomas administrators write in YAML
// (SmartNoise-SQL form), which travels as JSON text.
type DatasetMetadata struct {
	MaxIDs     int64
	Rows       int64
	RowPrivacy bool
	Columns    []MetadataColumn // in the data's column order
	JSON       string           // the whole document as sent, for keys not given a field here
}

// MetadataColumn is one entry of the metadata's `columns`.
type MetadataColumn struct {
	Name string
	Type string // "string", "int", "float", "boolean", "datetime"
	// Properties is the column's whole entry (`type`, `lower`, `upper`, `categories`, `nullable`...);
	// numbers are json.Number, so bounds stay exact.
	Properties map[string]any
}

// ColumnNames are the names of the columns, in the data's order.
func (m *DatasetMetadata) ColumnNames() []string {
	names := make([]string, len(m.Columns))
	for i, column := range m.Columns {
		names[i] = column.Name
	}
	return names
}

func parseMetadata(text string) (*DatasetMetadata, error) {
	var document struct {
		MaxIDs     int64           `json:"max_ids"`
		Rows       int64           `json:"rows"`
		RowPrivacy bool            `json:"row_privacy"`
		Columns    json.RawMessage `json:"columns"`
	}
	if err := json.Unmarshal([]byte(text), &document); err != nil {
		return nil, fmt.Errorf("lomas: the dataset metadata is not the expected JSON: %w", err)
	}
	columns, err := orderedColumns(document.Columns)
	if err != nil {
		return nil, fmt.Errorf("lomas: the metadata's columns are not the expected JSON: %w", err)
	}
	return &DatasetMetadata{
		MaxIDs:     document.MaxIDs,
		Rows:       document.Rows,
		RowPrivacy: document.RowPrivacy,
		Columns:    columns,
		JSON:       text,
	}, nil
}

// orderedColumns reads the `columns` object key by key: a Go map would lose the column order.
func orderedColumns(raw json.RawMessage) ([]MetadataColumn, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.UseNumber()
	if token, err := decoder.Token(); err != nil || token != json.Delim('{') {
		return nil, fmt.Errorf("not an object")
	}
	var columns []MetadataColumn
	for decoder.More() {
		token, err := decoder.Token()
		if err != nil {
			return nil, err
		}
		column := MetadataColumn{Name: token.(string)} // an object's keys are strings
		if err := decoder.Decode(&column.Properties); err != nil {
			return nil, fmt.Errorf("column %q: %w", column.Name, err)
		}
		column.Type, _ = column.Properties["type"].(string)
		columns = append(columns, column)
	}
	return columns, nil
}
