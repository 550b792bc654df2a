// Privacy losses are exact decimals and travel as strings (`"0.5"`, `"0.00001"`). This client keeps
// them as strings end to end: a JavaScript number is a binary float, and `0.1 + 0.2` is not `0.3`.
// Do arithmetic on them with a decimal library of your choice, never with `Number(...)`.

/** A decimal number written out in full, such as `"0.5"`, `"1e-5"` or `"10"`. */
export type DecimalText = string;

// What the gateway parses as a decimal: an optional sign, digits with an optional point, an
// optional exponent. No NaN, no Infinity, no spaces, no thousands separators.
const DECIMAL = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;

interface ParsedDecimal {
  negative: boolean;
  // The digits without leading zeros ("0" for zero).
  coefficient: string;
  // The value is coefficient × 10^exponent.
  exponent: number;
}

function parse(text: string): ParsedDecimal | undefined {
  const match = DECIMAL.exec(text);
  if (match === null) {
    return undefined;
  }
  const [, sign = "", whole = "", fraction = "", exponent = "0"] = match;
  if (whole === "" && fraction === "") {
    return undefined;
  }
  const digits = (whole + fraction).replace(/^0+/, "") || "0";
  return {
    negative: sign === "-",
    coefficient: digits,
    exponent: Number(exponent) - fraction.length,
  };
}

/** Whether `text` is a decimal literal the gateway accepts. */
export function isDecimalText(text: string): boolean {
  return parse(text) !== undefined;
}

/**
 * `value` checked as a decimal literal, to send as is. Only strings are taken: a budget written as
 * a JavaScript number has already been rounded to binary.
 */
export function decimalText(value: DecimalText, name: string): string {
  if (typeof value !== "string" || !isDecimalText(value)) {
    throw new TypeError(`${name} must be a decimal string such as "0.5" (got ${String(value)})`);
  }
  return value;
}

/**
 * The text Python's `str(Decimal(text))` gives for a decimal literal: the same digits (trailing
 * zeros kept), written with an exponent when it has one or when it is below 10^-6 (`"1E-7"`). The
 * gateway writes decimals without exponent, so the two differ only for values below a millionth.
 * The scenario runner prints losses this way so its observation equals the Python client's.
 */
export function pythonDecimalString(text: string): string {
  const parsed = parse(text);
  if (parsed === undefined) {
    throw new TypeError(`not a decimal: ${JSON.stringify(text)}`);
  }
  const { negative, coefficient, exponent } = parsed;
  // The General Decimal Arithmetic "to-scientific-string", as CPython's decimal module writes it.
  const leftDigits = exponent + coefficient.length;
  const dotPlace = exponent <= 0 && leftDigits > -6 ? leftDigits : 1;
  let integerPart: string;
  let fractionPart: string;
  if (dotPlace <= 0) {
    integerPart = "0";
    fractionPart = "." + "0".repeat(-dotPlace) + coefficient;
  } else if (dotPlace >= coefficient.length) {
    integerPart = coefficient + "0".repeat(dotPlace - coefficient.length);
    fractionPart = "";
  } else {
    integerPart = coefficient.slice(0, dotPlace);
    fractionPart = "." + coefficient.slice(dotPlace);
  }
  const shift = leftDigits - dotPlace;
  const exponentPart = shift === 0 ? "" : `E${shift > 0 ? "+" : "-"}${Math.abs(shift)}`;
  return (negative ? "-" : "") + integerPart + fractionPart + exponentPart;
}
