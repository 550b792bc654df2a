package arrowipc

import (
	"encoding/binary"
	"fmt"
)

// Arrow's message headers are FlatBuffers (https://flatbuffers.dev/internals/). Only reading is
// needed, and only tables, scalars, strings and vectors, so this file reads them by hand instead of
// depending on a FlatBuffers library that Debian does not package for Go.
//
// Every read is bounds-checked. A read outside the buffer panics with a malformedError, which
// Decode recovers into an ordinary error: the checks stay in one place instead of after every read.

type malformedError struct{ what string }

func (e malformedError) Error() string { return "arrowipc: malformed stream: " + e.what }

func malformed(format string, args ...any) {
	panic(malformedError{fmt.Sprintf(format, args...)})
}

func check(buf []byte, at, size int) {
	if at < 0 || size < 0 || at > len(buf)-size {
		malformed("%d bytes at offset %d are past the end of a %d-byte buffer", size, at, len(buf))
	}
}

func readU16(buf []byte, at int) uint16 {
	check(buf, at, 2)
	return binary.LittleEndian.Uint16(buf[at:])
}

func readU32(buf []byte, at int) uint32 {
	check(buf, at, 4)
	return binary.LittleEndian.Uint32(buf[at:])
}

func readU64(buf []byte, at int) uint64 {
	check(buf, at, 8)
	return binary.LittleEndian.Uint64(buf[at:])
}

// fbTable is a FlatBuffers table: the buffer and the table's position in it.
type fbTable struct {
	buf []byte
	pos int
}

// rootTable is the table a FlatBuffer starts with (its first four bytes are the offset to it).
func rootTable(buf []byte) fbTable {
	return fbTable{buf, int(readU32(buf, 0))}
}

// fieldPos is the position of the field in the given slot (the field's index in the schema, each
// union taking two: its type, then its value), or 0 when the field is absent (its default applies).
func (t fbTable) fieldPos(slot int) int {
	vtable := t.pos - int(int32(readU32(t.buf, t.pos)))
	vtableSize := int(readU16(t.buf, vtable))
	entry := 4 + 2*slot
	if entry+2 > vtableSize {
		return 0
	}
	offset := int(readU16(t.buf, vtable+entry))
	if offset == 0 {
		return 0
	}
	return t.pos + offset
}

func (t fbTable) uint8(slot int) uint8 {
	if at := t.fieldPos(slot); at != 0 {
		check(t.buf, at, 1)
		return t.buf[at]
	}
	return 0
}

func (t fbTable) bool(slot int) bool { return t.uint8(slot) != 0 }

func (t fbTable) int16(slot int) int16 {
	if at := t.fieldPos(slot); at != 0 {
		return int16(readU16(t.buf, at))
	}
	return 0
}

func (t fbTable) int32(slot int) int32 {
	if at := t.fieldPos(slot); at != 0 {
		return int32(readU32(t.buf, at))
	}
	return 0
}

func (t fbTable) int64(slot int) int64 {
	if at := t.fieldPos(slot); at != 0 {
		return int64(readU64(t.buf, at))
	}
	return 0
}

// follow is the position an offset stored at `at` points to (offsets are relative to themselves).
func (t fbTable) follow(at int) int {
	return at + int(readU32(t.buf, at))
}

// table is the sub-table in the slot (false when absent).
func (t fbTable) table(slot int) (fbTable, bool) {
	at := t.fieldPos(slot)
	if at == 0 {
		return fbTable{}, false
	}
	return fbTable{t.buf, t.follow(at)}, true
}

func (t fbTable) string(slot int) string {
	at := t.fieldPos(slot)
	if at == 0 {
		return ""
	}
	start := t.follow(at)
	size := int(readU32(t.buf, start))
	check(t.buf, start+4, size)
	return string(t.buf[start+4 : start+4+size])
}

// vector is the position of the first element of the vector in the slot and its length (0, 0 when
// absent), after checking that its elements, of elementSize bytes each, are in the buffer.
func (t fbTable) vector(slot, elementSize int) (start, length int) {
	at := t.fieldPos(slot)
	if at == 0 {
		return 0, 0
	}
	start = t.follow(at)
	length = int(readU32(t.buf, start))
	check(t.buf, start+4, length*elementSize)
	return start + 4, length
}

// tableAt is element i of a vector of tables that starts at `start`.
func (t fbTable) tableAt(start, i int) fbTable {
	return fbTable{t.buf, t.follow(start + 4*i)}
}
