"""Run mutmut on some of the core and write a short report (``./dev mutate [PATHS]``).

PATHS are source files (``job_manager/ledger.py``); none means the core of
docs/mutation.md. The report, ``mutants/report.md``, gives per module the mutants
killed, survived, untested and timed out, the kill rate, and each survivor's name, for
``mutmut show NAME``. Slow (minutes per module on two cores): on demand, never in CI.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["job_manager/phases/core.py", "job_manager/phases/recovery.py",
          "job_manager/phases/liveness.py", "job_manager/phases/submission.py",
          "job_manager/phases/handover.py", "job_manager/phases/owner_changes.py",
          "job_manager/phases/reads.py"]
CORE = ["job_manager/ledger.py", *PHASES, "job_manager/watchdog.py",
        "scheduler/access/auth.py", "common/identity.py", "scheduler/services/edge.py",
        "job_manager/stores/sqlite_job_store.py",
        "token_database/service.py", "leadership/lease.py", "leadership/lock.py",
        "leadership/dynamodb_lease.py", "job_manager/stores/fenced_commits.py",
        "scheduler/replication/replicas.py"]


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def main(paths: list[str]) -> int:
    modules = [module_of(p) for p in (paths or CORE)]
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    subprocess.run([mutmut, "run", *(f"{m}*" for m in modules)], cwd=ROOT, check=False)
    listed = subprocess.run([mutmut, "results", "--all", "true"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in listed.splitlines():
        name, _, outcome = line.strip().rpartition(": ")
        module = next((m for m in modules if name.startswith(m + ".")), None)
        if module is None:
            continue
        outcomes[module][outcome] += 1
        if outcome == "survived":
            survivors[module].append(name)
    lines = ["# Mutation report", "", "| module | killed | survived | no tests | timeout | "
             "kill rate |", "| --- | --- | --- | --- | --- | --- |"]
    for module in modules:
        seen = outcomes[module]
        tried = seen["killed"] + seen["survived"] + seen["no tests"] + seen["timeout"]
        rate = f"{100 * (seen['killed'] + seen['timeout']) / tried:.0f}%" if tried else "-"
        lines.append(f"| {module} | {seen['killed']} | {seen['survived']} | "
                     f"{seen['no tests']} | {seen['timeout']} | {rate} |")
    for module in modules:
        if survivors[module]:
            lines += ["", f"## Survivors in {module}", ""]
            lines += [f"- `{name}`" for name in survivors[module]]
    report = ROOT / "mutants" / "report.md"
    report.parent.mkdir(exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(modules) + 4]))
    print(f"\nfull report: {report.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
