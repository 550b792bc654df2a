"""`python -m lomas.admin_cli`: the same as `lomas-admin`."""

from lomas.admin_cli.main import main

raise SystemExit(main())
