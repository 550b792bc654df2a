"""Statistical DP audits, longer than CI's: per mechanism family, the epsilon lower bound that its
releases realise (99 % confidence) beside the epsilon they were charged.

Starts an embedded mesh, registers two neighbouring datasets and a researcher with a big grant
(lomas_testing.dp_audit), then runs `--draws` charged releases per dataset and mechanism through the
client, and the negative control (half the noise), which must be caught. More draws give tighter
bounds: a pure Laplace bound approaches its charged epsilon, while the Gaussian mechanisms' loss
lives in tails that only many draws reach. The grant's delta (0.9) allows about 16,000 draws per
dataset of every Gaussian family.

    .venv/bin/python bench/dp_audit.py [--draws 5000] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lomas_embedded.local import local_mesh
from lomas_testing.dp_audit import (
    MechanismAudit,
    audit_broken_sum,
    audit_on_platform,
    platform_mechanisms,
    register_neighbours,
)

AUDITOR = "dp-auditor"
DATASETS = ("AUDIT_D", "AUDIT_D_PRIME")


def run(directory: Path, draws: int, only: str) -> tuple[list[MechanismAudit], MechanismAudit]:
    """The audits of the platform's mechanisms, then the negative control's."""
    results = []
    with local_mesh(directory) as running:
        with running.admin() as admin:
            register_neighbours(admin, directory / "audit", AUDITOR, DATASETS)
        clients = (running.client(AUDITOR, DATASETS[0]), running.client(AUDITOR, DATASETS[1]))
        for mechanism in platform_mechanisms():
            if only.lower() in mechanism.name.lower():
                results.append(audit_on_platform(mechanism, clients, draws))
                print(results[-1].line(), flush=True)
        control = audit_broken_sum(clients[0], draws)
        print(control.line(), flush=True)
        for client in clients:
            client.close()
    return results, control


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=5000, help="per dataset and mechanism")
    parser.add_argument("--only", default="", help="audit only mechanisms whose name has this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        results, control = run(Path(directory), args.draws, args.only)
    print()
    print(f"{'mechanism':<38} {'charged epsilon':>15} {'delta':>7} {'lower bound':>11}  verdict")
    rows = [(r, "ok" if r.passed else "LEAKS MORE THAN CHARGED") for r in results]
    # The negative control leaks by design: the audit must catch it.
    rows.append((control, "MISSED (too few draws)" if control.passed else "caught"))
    for result, verdict in rows:
        print(
            f"{result.name:<38} {float(result.epsilon):>15.4f} {float(result.delta):>7.0e} "
            f"{result.result.epsilon_lower_bound:>11.3f}  {verdict}"
        )


if __name__ == "__main__":
    main()
