"""`lomas-admin`'s entry point: parse, run one command, print, and exit with its code
(0 done, 1 refused by the platform, 2 usage)."""

from __future__ import annotations

import argparse
import json
import sys

import lomas.admin_cli.parser as command_line
from lomas.admin_cli.common import UsageError, refusal_text
from lomas.admin_cli.render import Output
from lomas.client.admin import AdminClient
from lomas.client.errors import LomasError

OK, REFUSED, USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = command_line.build()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error argparse has printed
        return exit_.code if isinstance(exit_.code, int) else USAGE
    try:
        token = _token(args)
        with AdminClient(args.target, token=token) as admin:
            output: Output = args.run(admin, args)
    except UsageError as error:
        print(f"lomas-admin: error: {error}", file=sys.stderr)
        return USAGE
    except LomasError as error:
        print(f"lomas-admin: {_refusal(error, args.target)}", file=sys.stderr)
        return REFUSED
    if args.json:
        print(json.dumps(output.data, indent=2, ensure_ascii=False))
    elif output.text:
        print(output.text)
    if output.problem:
        print(f"lomas-admin: {output.problem}", file=sys.stderr)
    return output.code


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = str(args.token_file.read_text()).strip()
        except OSError as error:
            raise UsageError(f"cannot read {args.token_file}: {error.strerror}") from None
    else:
        token = str(args.token)
    if not token:
        raise UsageError("an admin token is required (--token, --token-file or LOMAS_TOKEN)")
    return token


def _refusal(error: LomasError, target: str) -> str:
    if error.reason in ("UNAVAILABLE", "BACKEND_UNAVAILABLE") and (
        error.metadata.get("peer") == "gateway"
    ):
        return f"cannot reach the gateway at {target} ({error.code}: {error.message})"
    return refusal_text(error)


if __name__ == "__main__":
    raise SystemExit(main())
