package lomas

import (
	"encoding/json"
	"math/big"
	"testing"
)

// Python's str(Decimal(text)), for each text (printed by CPython 3.11's decimal module).
var pythonDecimalText = map[string]string{
	"0.5": "0.5", "0.00001": "0.00001", "1E-5": "0.00001", "0.000001": "0.000001",
	"0.0000001": "1E-7", "1E-7": "1E-7", "10": "10", "1E+1": "1E+1", "1.0E+3": "1.0E+3",
	"10E2": "1.0E+3", "0": "0", "0.0": "0.0", "0E-7": "0E-7", "-0": "-0", "-1.50": "-1.50",
	"007": "7", "00.5": "0.5", ".5": "0.5", "5.": "5", "1e-6": "0.000001",
	"123.456e-10": "1.23456E-8", "0.00000123": "0.00000123",
	"12345678901234567890.123": "12345678901234567890.123", "+3": "3", "9.99E+5": "9.99E+5",
	"1000": "1000", "1e0": "1", "-0.000000": "-0.000000", "0E+2": "0E+2",
}

func TestDecimalPrintsAsPython(t *testing.T) {
	for text, want := range pythonDecimalText {
		d, err := ParseDecimal(text)
		if err != nil {
			t.Errorf("ParseDecimal(%q): %v", text, err)
			continue
		}
		if got := d.String(); got != want {
			t.Errorf("ParseDecimal(%q).String() = %q, want %q", text, got, want)
		}
	}
}

func TestTheZeroDecimalIsZero(t *testing.T) {
	var zero Decimal
	if zero.String() != "0" || zero.Rat().Sign() != 0 {
		t.Errorf("the zero Decimal is %q, %v", zero.String(), zero.Rat())
	}
}

func TestDecimalRefusesWhatIsNotADecimal(t *testing.T) {
	for _, text := range []string{"", "-", ".", "e5", "1e", "1e+", "1.2.3", "0x10", "1,5", " 1", "1 ", "NaN", "Infinity", "1e99999", "1_000", "１"} {
		if d, err := ParseDecimal(text); err == nil {
			t.Errorf("ParseDecimal(%q) = %v, want an error", text, d)
		}
	}
}

func TestDecimalArithmeticIsExact(t *testing.T) {
	// 0.1 + 0.2 is 0.3 exactly, which binary floats cannot say.
	a, b, c := mustDecimal(t, "0.1"), mustDecimal(t, "0.2"), mustDecimal(t, "0.3")
	if sum := new(big.Rat).Add(a.Rat(), b.Rat()); sum.Cmp(c.Rat()) != 0 {
		t.Errorf("0.1 + 0.2 = %v", sum)
	}
	if mustDecimal(t, "1.50").Cmp(mustDecimal(t, "15E-1")) != 0 {
		t.Error("1.50 and 15E-1 differ")
	}
	if mustDecimal(t, "-2").Cmp(mustDecimal(t, "1E-7")) != -1 {
		t.Error("-2 is not below 1E-7")
	}
	if got := mustDecimal(t, "-12.5E+2").Rat().RatString(); got != "-1250" {
		t.Errorf("-12.5E+2 is %s", got)
	}
}

func TestDecimalJSONIsItsText(t *testing.T) {
	encoded, err := json.Marshal(map[string]Decimal{"epsilon": mustDecimal(t, "0.0000001")})
	if err != nil || string(encoded) != `{"epsilon":"1E-7"}` {
		t.Errorf("json.Marshal = %s, %v", encoded, err)
	}
	var decoded struct{ Delta Decimal }
	if err := json.Unmarshal([]byte(`{"Delta":"0.00001"}`), &decoded); err != nil || decoded.Delta.String() != "0.00001" {
		t.Errorf("json.Unmarshal = %v, %v", decoded.Delta, err)
	}
}

func mustDecimal(t *testing.T, text string) Decimal {
	t.Helper()
	d, err := ParseDecimal(text)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
