#!/usr/bin/env bash
# mypy --strict (mypy.ini) over every hand-written package, then over each test and bench folder on its
# own: each test folder has its own conftest.py, which one run could not tell apart.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/mypy services/common/lomas_common services/admin/lomas_admin services/budget/lomas_budget \
  services/executor/lomas_executor services/gateway/lomas_gateway services/embedded/lomas_embedded \
  services/testing/lomas_testing services/dashboard/lomas_dashboard clients/python/lomas/client clients/python/lomas/admin_cli scripts
for folder in tests/e2e bench services/common/tests services/admin/tests services/budget/tests \
  services/executor/tests services/gateway/tests services/dashboard/tests services/testing/tests clients/python/tests; do
  .venv/bin/mypy "$folder"
done
if grep -rn "type: ignore" --include=*.py services clients/python/lomas/client clients/python/lomas/admin_cli \
  clients/python/tests tests bench scripts; then
  echo "hand-written code must not silence the type checker (type: ignore above)" >&2
  exit 1
fi
