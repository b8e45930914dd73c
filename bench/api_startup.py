"""What an API process spends importing its code, with the plotting and statistics libraries
loaded when first used (as now) and at import (the baseline), in this one run.

  import    CPU seconds of `python -c "import service.api"`, and of the same import with
            scipy.stats and matplotlib's Figure loaded beside it, as the API loaded them at
            start-up before. Every API process (`python -m service api`, each uvicorn worker)
            pays this before it answers.

    .venv/bin/python bench/api_startup.py [--repeats 7]
"""

import argparse
import os
import platform
import statistics

from common import child_cpu_seconds

IMPORTS = {
    "scipy.stats and matplotlib at import (baseline)": (
        "import service.api, scipy.stats, matplotlib.figure, matplotlib.ticker"
    ),
    "loaded when first used (now)": "import service.api",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in IMPORTS}
    # Taking turns, so a slow moment of the machine falls on both sides.
    for _ in range(args.repeats):
        for name, code in IMPORTS.items():
            seconds[name].append(child_cpu_seconds(code))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; medians of {args.repeats}")
    print("| the API's code, with | CPU seconds to import |")
    print("|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    baseline, now = (statistics.median(values) for values in seconds.values())
    print(f"| ratio now / baseline | {now / baseline:.2f} |")


if __name__ == "__main__":
    main()
