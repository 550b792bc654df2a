"""`lomas-admin`: administer a Lomas mesh through its gateway (needs an admin token).

Commands go noun then verb (`lomas-admin users add NAME`); `lomas-admin --help` lists them and
`lomas-admin NOUN VERB --help` explains one. The token comes from --token, --token-file or the
LOMAS_TOKEN environment variable.
"""

from lomas.admin_cli.main import main

__all__ = ["main"]
