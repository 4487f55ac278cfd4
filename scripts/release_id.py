#!/usr/bin/env python3
"""The release id of the one release archive in DIR (`make release-id`).

    scripts/release_id.py DIR [OUTPUT]

The CD workflow downloads CI's archive, `zapora-api-<release>.tar` (scripts/build-release.sh),
into DIR and deploys that release id: this prints it, and appends `release=<id>` to OUTPUT
(the workflow's step outputs) when given. Exactly one archive must be there: with none or
several it fails, naming them, rather than guess which release to deploy.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ARCHIVE = re.compile(r"^zapora-api-(g[0-9a-f]+(?:-dirty)?-[0-9a-f]{12})\.tar$")


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    folder = Path(argv[0])
    found = sorted(p.name for p in folder.glob("zapora-api-*.tar")) if folder.is_dir() else []
    releases = [m.group(1) for name in found if (m := ARCHIVE.match(name))]
    if len(releases) != 1 or len(found) != 1:
        print(
            f"ERROR: {folder} must hold exactly one release archive zapora-api-<release>.tar; "
            f"found {found or 'none'}",
            file=sys.stderr,
        )
        return 1
    print(releases[0])
    if len(argv) == 2:
        with Path(argv[1]).open("a") as out:
            out.write(f"release={releases[0]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
