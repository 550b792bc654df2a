// Package arrowipc reads the Arrow IPC stream format, the form in which Lomas sends every release and
// dummy dataset (https://arrow.apache.org/docs/format/Columnar.html#ipc-streaming-format).
//
// Debian packages no Arrow library for Go, so this is a small reader written from the format's
// specification. It reads:
//   - the schema: every top-level column's name, type and nullability;
//   - the row count of every record batch (their sum is the table's);
//   - the values of top-level columns of the simple types: signed and unsigned integers, 32- and
//     64-bit floats, booleans, UTF-8 strings (utf8, large_utf8), with nulls.
//
// It does not decode the values of other types (nested, temporal, decimal, binary, dictionary-encoded
// columns) nor compressed bodies: Column reports why instead. Names and row counts are read whatever
// the types. Anyone who needs more hands the stream (Release.IPC in package lomas) to a full Arrow
// library.
package arrowipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Field is a top-level column of a table's schema.
type Field struct {
	Name string
	// Type is the Arrow type's name: "int64", "uint8", "float64", "bool", "utf8", "large_utf8",
	// "timestamp", "struct", ... (for a dictionary-encoded column: its values' type).
	Type       string
	Nullable   bool
	Dictionary bool // dictionary-encoded
}

// Table is a decoded IPC stream: its schema, its row count and the values this package can decode.
type Table struct {
	Fields []Field
	Rows   int64
	// columns[i] holds column i's values over all record batches, or why they are not decoded.
	columns []column
}

type column struct {
	values []any
	err    error
}

// ColumnNames are the names of the columns, in schema order (names can repeat).
func (t *Table) ColumnNames() []string {
	names := make([]string, len(t.Fields))
	for i, field := range t.Fields {
		names[i] = field.Name
	}
	return names
}

// Column is the values of column i, one per row: int64, uint64, float64, bool, string, or nil for
// a null. It is an error for a column whose values this package does not decode.
func (t *Table) Column(i int) ([]any, error) {
	if i < 0 || i >= len(t.columns) {
		return nil, fmt.Errorf("arrowipc: no column %d in a table of %d columns", i, len(t.columns))
	}
	if t.columns[i].err != nil {
		return nil, t.columns[i].err
	}
	return t.columns[i].values, nil
}

// Message header types (the MessageHeader union of Message.fbs).
const (
	headerSchema          = 1
	headerDictionaryBatch = 2
	headerRecordBatch     = 3
)

// Decode reads a whole IPC stream. Empty input is an empty table (the platform sends no bytes
// for a release that has none).
func Decode(stream []byte) (table *Table, err error) {
	defer func() {
		if recovered := recover(); recovered != nil {
			bad, ok := recovered.(malformedError)
			if !ok {
				panic(recovered)
			}
			table, err = nil, bad
		}
	}()
	table = &Table{}
	if len(stream) == 0 {
		return table, nil
	}
	var schema *schema
	for pos := 0; pos < len(stream); {
		metadataSize := int(int32(readU32(stream, pos)))
		pos += 4
		if uint32(metadataSize) == 0xFFFFFFFF { // continuation marker, then the size
			metadataSize = int(int32(readU32(stream, pos)))
			pos += 4
		}
		if metadataSize == 0 { // end of stream
			break
		}
		check(stream, pos, metadataSize)
		message := rootTable(stream[pos : pos+metadataSize])
		pos += metadataSize
		bodySize := message.int64(3)
		if bodySize < 0 || bodySize > int64(len(stream)-pos) {
			malformed("a message body of %d bytes at offset %d", bodySize, pos)
		}
		body := stream[pos : pos+int(bodySize)]
		pos += int(bodySize)
		header, ok := message.table(2)
		headerType := message.uint8(1)
		switch {
		case !ok:
			malformed("a message without a header")
		case headerType == headerSchema && schema == nil:
			schema = readSchema(header)
			table.Fields = schema.publicFields()
			table.columns = make([]column, len(schema.fields))
		case schema == nil:
			malformed("a stream that does not start with its schema")
		case headerType == headerRecordBatch:
			table.Rows += schema.readBatch(header, body, table.columns)
		case headerType == headerDictionaryBatch:
			// Dictionaries only serve dictionary-encoded columns, whose values are not decoded.
		default:
			malformed("a message of header type %d in a stream", headerType)
		}
	}
	if schema == nil {
		malformed("a stream without a schema")
	}
	return table, nil
}

// Type ids of the Type union (Schema.fbs).
const (
	typeNull            = 1
	typeInt             = 2
	typeFloatingPoint   = 3
	typeBinary          = 4
	typeUtf8            = 5
	typeBool            = 6
	typeList            = 12
	typeStruct          = 13
	typeUnion           = 14
	typeFixedSizeList   = 16
	typeMap             = 17
	typeLargeBinary     = 19
	typeLargeUtf8       = 20
	typeLargeList       = 21
	typeRunEndEncoded   = 22
	typeListView        = 25
	typeLargeListView   = 26
	unionModeDense      = 1
	precisionSingle     = 1
	precisionDouble     = 2
	endiannessBig       = 1
	unknownBufferCounts = -1
)

var typeNames = map[uint8]string{
	typeNull: "null", typeInt: "int", typeFloatingPoint: "float", typeBinary: "binary",
	typeUtf8: "utf8", typeBool: "bool", 7: "decimal", 8: "date", 9: "time", 10: "timestamp",
	11: "interval", typeList: "list", typeStruct: "struct", typeUnion: "union",
	15: "fixed_size_binary", typeFixedSizeList: "fixed_size_list", typeMap: "map", 18: "duration",
	typeLargeBinary: "large_binary", typeLargeUtf8: "large_utf8", typeLargeList: "large_list",
	typeRunEndEncoded: "run_end_encoded", 23: "binary_view", 24: "utf8_view",
	typeListView: "list_view", typeLargeListView: "large_list_view",
}

var floatNames = map[int]string{0: "float16", precisionSingle: "float32", precisionDouble: "float64"}

// field is a schema field as the record batches need it.
type field struct {
	Field
	typeID    uint8
	bitWidth  int  // Int
	signed    bool // Int
	precision int  // FloatingPoint
	// nodes and buffers this field takes in a record batch, its children included
	// (unknownBufferCounts for the types whose counts are not fixed by the schema).
	nodes, buffers int
}

type schema struct {
	fields    []field
	bigEndian bool
}

func (s *schema) publicFields() []Field {
	fields := make([]Field, len(s.fields))
	for i, f := range s.fields {
		fields[i] = f.Field
	}
	return fields
}

func readSchema(header fbTable) *schema {
	s := &schema{bigEndian: header.int16(0) == endiannessBig}
	start, count := header.vector(1, 4)
	// Each field a writer writes has its own 4-byte offset in a vector: more fields than that can
	// only come from offsets that loop back, which must not recurse forever.
	fieldBudget := len(header.buf) / 4
	for i := 0; i < count; i++ {
		s.fields = append(s.fields, readField(header.tableAt(start, i), &fieldBudget))
	}
	return s
}

func readField(table fbTable, fieldBudget *int) field {
	if *fieldBudget--; *fieldBudget < 0 {
		malformed("a schema with more fields than its bytes can hold")
	}
	f := field{Field: Field{Name: table.string(0), Nullable: table.bool(1)}}
	f.typeID = table.uint8(2)
	typeTable, hasType := table.table(3)
	f.Type = typeNames[f.typeID]
	if f.Type == "" {
		f.Type = fmt.Sprintf("type %d", f.typeID)
	}
	switch {
	case f.typeID == typeInt && hasType:
		f.bitWidth, f.signed = int(typeTable.int32(0)), typeTable.bool(1)
		f.Type = fmt.Sprintf("uint%d", f.bitWidth)
		if f.signed {
			f.Type = f.Type[1:]
		}
	case f.typeID == typeFloatingPoint && hasType:
		f.precision = int(typeTable.int16(0))
		if name, known := floatNames[f.precision]; known {
			f.Type = name
		}
	}
	_, f.Dictionary = table.table(4)
	f.nodes, f.buffers = 1, ownBuffers(f.typeID, typeTable)
	if f.Dictionary {
		f.buffers = 2 // a dictionary-encoded column holds indices: validity and data
		return f
	}
	start, count := table.vector(5, 4)
	for i := 0; i < count; i++ {
		child := readField(table.tableAt(start, i), fieldBudget)
		if child.buffers == unknownBufferCounts || f.buffers == unknownBufferCounts {
			f.buffers = unknownBufferCounts
			continue
		}
		f.nodes += child.nodes
		f.buffers += child.buffers
	}
	return f
}

// ownBuffers is how many buffers a field of the type has in a record batch, children excluded.
func ownBuffers(typeID uint8, typeTable fbTable) int {
	switch typeID {
	case typeNull, typeRunEndEncoded:
		return 0
	case typeStruct, typeFixedSizeList:
		return 1 // validity
	case typeUnion:
		if typeTable.buf != nil && typeTable.int16(0) == unionModeDense {
			return 2 // type ids, offsets
		}
		return 1 // type ids
	case typeBinary, typeUtf8, typeLargeBinary, typeLargeUtf8, typeListView, typeLargeListView:
		return 3 // validity, offsets (or sizes), data (or offsets)
	case typeList, typeLargeList, typeMap:
		return 2 // validity, offsets
	case 23, 24: // binary and utf8 views: validity, views, then as many data buffers as the batch says
		return unknownBufferCounts
	default:
		return 2 // the fixed-width types: validity, data
	}
}

// readBatch appends the batch's values to columns (or records why it cannot) and returns its row
// count.
func (s *schema) readBatch(header fbTable, body []byte, columns []column) int64 {
	rows := header.int64(0)
	if rows < 0 {
		malformed("a record batch of %d rows", rows)
	}
	_, compressed := header.table(3)
	batch := batchBuffers{header: header, body: body}
	batch.nodes, batch.nodeCount = header.vector(1, 16)
	batch.buffers, batch.bufferCount = header.vector(2, 16)
	located := true // whether the next column's first node and buffer are known
	node, buffer := 0, 0
	for i := range s.fields {
		f := &s.fields[i]
		column := &columns[i]
		switch {
		case column.err != nil:
		case compressed:
			column.err = errors.New("arrowipc: the stream's bodies are compressed")
		case s.bigEndian:
			column.err = errors.New("arrowipc: the stream is big-endian")
		case !located:
			column.err = errors.New("arrowipc: the column follows one whose buffer count is not fixed")
		case f.buffers == unknownBufferCounts:
			column.err = fmt.Errorf("arrowipc: values of type %s are not decoded", f.Type)
		default:
			length, buffers := batch.column(node, buffer, f.buffers)
			values, err := decodeValues(f, length, buffers)
			column.values, column.err = append(column.values, values...), err
		}
		located = located && f.buffers != unknownBufferCounts
		node, buffer = node+f.nodes, buffer+f.buffers
	}
	return rows
}

// batchBuffers are a record batch's field nodes and buffers, and its body.
type batchBuffers struct {
	header               fbTable
	body                 []byte
	nodes, nodeCount     int // the vector of FieldNode structs {length, null_count: int64}
	buffers, bufferCount int // the vector of Buffer structs {offset, length: int64}
}

// column is the length of field node `node` and the `count` buffers from buffer `first`.
func (b batchBuffers) column(node, first, count int) (int64, [][]byte) {
	if node >= b.nodeCount || first+count > b.bufferCount {
		malformed("a record batch with too few nodes (%d) or buffers (%d) for its schema", b.nodeCount, b.bufferCount)
	}
	buffers := make([][]byte, count)
	for i := range buffers {
		at := b.buffers + 16*(first+i)
		offset, size := int64(readU64(b.header.buf, at)), int64(readU64(b.header.buf, at+8))
		if offset < 0 || size < 0 || offset > int64(len(b.body)) || size > int64(len(b.body))-offset {
			malformed("a buffer of %d bytes at %d in a body of %d bytes", size, offset, len(b.body))
		}
		buffers[i] = b.body[offset : offset+size]
	}
	return int64(readU64(b.header.buf, b.nodes+16*node)), buffers
}

// decodeValues decodes one column of one batch from its buffers (validity, then data or offsets and
// data), or says why it does not.
func decodeValues(f *field, length int64, buffers [][]byte) ([]any, error) {
	if f.Dictionary {
		return nil, errors.New("arrowipc: the column is dictionary-encoded")
	}
	var width int64 // bytes per value, or per offset for strings
	switch {
	case f.typeID == typeInt && (f.bitWidth == 8 || f.bitWidth == 16 || f.bitWidth == 32 || f.bitWidth == 64):
		width = int64(f.bitWidth / 8)
	case f.typeID == typeFloatingPoint && f.precision == precisionSingle:
		width = 4
	case f.typeID == typeFloatingPoint && f.precision == precisionDouble:
		width = 8
	case f.typeID == typeUtf8:
		width = 4
	case f.typeID == typeLargeUtf8:
		width = 8
	case f.typeID == typeBool:
	default:
		return nil, fmt.Errorf("arrowipc: values of type %s are not decoded", f.Type)
	}
	// Every decoded type takes at least a bit per row, which bounds the length before any
	// multiplication or allocation.
	validity, data := buffers[0], buffers[1]
	if length < 0 || length > int64(len(data))*8 {
		malformed("%d values of column %q in %d bytes", length, f.Name, len(data))
	}
	needed := length * width
	if f.typeID == typeBool {
		needed = (length + 7) / 8
	} else if (f.typeID == typeUtf8 || f.typeID == typeLargeUtf8) && length > 0 {
		needed = (length + 1) * width
	}
	if int64(len(data)) < needed || (len(validity) != 0 && int64(len(validity)) < (length+7)/8) {
		malformed("buffers too short for %d values of column %q", length, f.Name)
	}
	values := make([]any, length)
	for row := range values {
		if len(validity) != 0 && validity[row/8]>>(row%8)&1 == 0 {
			continue // null
		}
		at := int64(row) * width
		switch f.typeID {
		case typeInt:
			values[row] = integer(data[at:], f.bitWidth, f.signed)
		case typeFloatingPoint:
			if width == 4 {
				values[row] = float64(math.Float32frombits(binary.LittleEndian.Uint32(data[at:])))
			} else {
				values[row] = math.Float64frombits(binary.LittleEndian.Uint64(data[at:]))
			}
		case typeBool:
			values[row] = data[row/8]>>(row%8)&1 == 1
		default: // utf8 and large_utf8: offsets, then the characters
			start := integer(data[at:], f.stringOffsetBits(), true).(int64)
			end := integer(data[at+width:], f.stringOffsetBits(), true).(int64)
			if start < 0 || end < start || end > int64(len(buffers[2])) {
				malformed("string offsets %d to %d in %d bytes", start, end, len(buffers[2]))
			}
			values[row] = string(buffers[2][start:end])
		}
	}
	return values, nil
}

func (f *field) stringOffsetBits() int {
	if f.typeID == typeLargeUtf8 {
		return 64
	}
	return 32
}

// integer is the little-endian integer at the start of data: int64 if signed, else uint64.
func integer(data []byte, bits int, signed bool) any {
	var unsigned uint64
	switch bits {
	case 8:
		unsigned = uint64(data[0])
	case 16:
		unsigned = uint64(binary.LittleEndian.Uint16(data))
	case 32:
		unsigned = uint64(binary.LittleEndian.Uint32(data))
	default:
		unsigned = binary.LittleEndian.Uint64(data)
	}
	if !signed {
		return unsigned
	}
	shift := 64 - bits
	return int64(unsigned<<shift) >> shift
}
