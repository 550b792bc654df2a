package lomas

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Decimal is an exact decimal number: privacy losses and budgets travel as decimal strings and are
// never turned into binary floats. String prints it as Python's str(Decimal(text)) does, so the Go
// and Python clients show the same text for the same value ("0.00001", "1E-7", "1.50"); Rat gives an
// exact big.Rat for arithmetic. The zero value is 0.
type Decimal struct {
	negative bool
	digits   string // the coefficient's decimal digits without leading zeros ("" or "0" for zero)
	exponent int    // the value is ±digits × 10^exponent
}

// maxExponent bounds exponents so that Rat cannot be asked for a number of millions of digits;
// privacy values never come near it (the platform refuses absurd magnitudes).
const maxExponent = 1000

// ParseDecimal reads a decimal as the platform writes it: an optional sign, digits with an optional
// point, and an optional exponent ("0.5", "10", "1E-7", "-2.50e+3"). It keeps trailing zeros, as
// Python's Decimal does.
func ParseDecimal(text string) (Decimal, error) {
	invalid := func() (Decimal, error) {
		return Decimal{}, fmt.Errorf("lomas: %q is not a decimal number", text)
	}
	var d Decimal
	rest := text
	if rest != "" && (rest[0] == '+' || rest[0] == '-') {
		d.negative = rest[0] == '-'
		rest = rest[1:]
	}
	mantissa, exponentText, hasExponent := strings.Cut(strings.ToLower(rest), "e")
	whole, fraction, _ := strings.Cut(mantissa, ".")
	if whole+fraction == "" || !allDigits(whole) || !allDigits(fraction) {
		return invalid()
	}
	if hasExponent {
		exponent, err := strconv.Atoi(exponentText)
		if err != nil {
			return invalid()
		}
		d.exponent = exponent
	}
	d.exponent -= len(fraction)
	d.digits = strings.TrimLeft(whole+fraction, "0")
	if d.exponent < -maxExponent || d.exponent > maxExponent {
		return Decimal{}, fmt.Errorf("lomas: the exponent of %q is beyond ±%d", text, maxExponent)
	}
	return d, nil
}

func allDigits(text string) bool {
	for _, c := range text {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// String is the decimal as Python's str(Decimal) writes it: plain notation unless the exponent is
// positive or the number is smaller than 1E-6, then scientific notation with one digit before the
// point.
func (d Decimal) String() string {
	digits := d.digits
	if digits == "" {
		digits = "0"
	}
	sign := ""
	if d.negative {
		sign = "-"
	}
	// The position of the point, counted in digits from the left of the coefficient.
	leftDigits := d.exponent + len(digits)
	dotPlace := leftDigits
	if d.exponent > 0 || leftDigits <= -6 {
		dotPlace = 1
	}
	var integer, fraction string
	switch {
	case dotPlace <= 0:
		integer, fraction = "0", "."+strings.Repeat("0", -dotPlace)+digits
	case dotPlace >= len(digits):
		integer = digits + strings.Repeat("0", dotPlace-len(digits))
	default:
		integer, fraction = digits[:dotPlace], "."+digits[dotPlace:]
	}
	exponent := ""
	if leftDigits != dotPlace {
		exponent = fmt.Sprintf("E%+d", leftDigits-dotPlace)
	}
	return sign + integer + fraction + exponent
}

// Rat is the exact value.
func (d Decimal) Rat() *big.Rat {
	coefficient, ok := new(big.Int).SetString("0"+d.digits, 10)
	if !ok { // only ParseDecimal makes a Decimal, and it checked the digits
		panic("lomas: a Decimal with non-decimal digits")
	}
	if d.negative {
		coefficient.Neg(coefficient)
	}
	power := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(d.exponent))), nil)
	if d.exponent < 0 {
		return new(big.Rat).SetFrac(coefficient, power)
	}
	return new(big.Rat).SetInt(coefficient.Mul(coefficient, power))
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// Cmp compares the values: -1, 0 or +1 as d is less than, equal to or greater than other
// ("1.50" and "1.5" are equal).
func (d Decimal) Cmp(other Decimal) int { return d.Rat().Cmp(other.Rat()) }

// MarshalText writes the decimal as String does (a JSON string in encoding/json).
func (d Decimal) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads the decimal as ParseDecimal does.
func (d *Decimal) UnmarshalText(text []byte) error {
	parsed, err := ParseDecimal(string(text))
	if err == nil {
		*d = parsed
	}
	return err
}
