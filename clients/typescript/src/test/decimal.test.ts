import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decimalText, isDecimalText, pythonDecimalString } from "../decimal.js";

describe("pythonDecimalString", () => {
  // Each pair is what CPython 3.11 prints for str(Decimal(text)).
  const python: [string, string][] = [
    ["0", "0"],
    ["0.5", "0.5"],
    ["0.00001", "0.00001"],
    ["0.000001", "0.000001"],
    ["0.0000001", "1E-7"],
    ["0.00000099", "9.9E-7"],
    ["10", "10"],
    ["1000", "1000"],
    ["1E+3", "1E+3"],
    ["1e3", "1E+3"],
    ["1E2", "1E+2"],
    ["1.50", "1.50"],
    ["0.00", "0.00"],
    ["-0", "-0"],
    ["-1.5", "-1.5"],
    [".5", "0.5"],
    ["1.", "1"],
    ["00012.3400", "12.3400"],
    ["1e-7", "1E-7"],
    ["123456789012345678901234567890", "123456789012345678901234567890"],
    ["0.000010000000000000001", "0.000010000000000000001"],
    ["9.99999", "9.99999"],
    ["4.99999E-3", "0.00499999"],
    ["2.5e-6", "0.0000025"],
    ["0E-9", "0E-9"],
    ["12.5e-1", "1.25"],
  ];
  for (const [text, expected] of python) {
    it(`writes ${text} as ${expected}`, () => {
      assert.equal(pythonDecimalString(text), expected);
    });
  }

  it("refuses what is not a decimal", () => {
    for (const text of ["", ".", "abc", "1e", "NaN", "Infinity", "1 ", "1,5", "0x10"]) {
      assert.throws(() => pythonDecimalString(text), TypeError, text);
    }
  });
});

describe("decimalText", () => {
  it("passes decimal strings through unchanged, digits and all", () => {
    for (const text of ["0.1", "0.30000000000000004", "1e-5", "10", "+2.50"]) {
      assert.equal(decimalText(text, "epsilon"), text);
      assert.ok(isDecimalText(text));
    }
  });

  it("refuses JavaScript numbers and non-decimals, naming the parameter", () => {
    for (const value of [0.1, 1, Number.NaN, "NaN", "-Infinity", "", "one"]) {
      assert.throws(
        () => decimalText(value as unknown as string, "delta"),
        /delta must be a decimal string/,
      );
    }
  });
});
