"""`make dist`: the gateway and its runtime dependencies in one executable file.

    python scripts/build_dist.py [OUTPUT]        # default: dist/gateway

The file is a zipapp built by shiv: `OUTPUT serve --config FILE` on any machine with
the same Python minor version and platform as the build (the dependencies' compiled
wheels, orjson, uvloop, aiohttp's speedups, are inside it).  Its shebang names that
version (`python3.11`), so a mismatched interpreter fails at once, not at an import.
On first start it unpacks itself into ~/.shiv (or $SHIV_ROOT), once per build.

The package is built from a copy of its sources in a temporary folder: a `build/`
folder left in the work tree by an earlier build could otherwise slip modules that
no longer exist into the file, and the work tree stays untouched.  Only runtime
dependencies go in (setup.cfg's install_requires, no extras).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("gateway", "setup.cfg", "pyproject.toml", "README.md")  # README.md: setup.cfg's long_description


def build(output: Path) -> Path:
    shiv = Path(sys.executable).parent / "shiv"
    if not shiv.exists():
        raise SystemExit(f"{shiv} not found: `make dist` installs it (setup.cfg, extras 'dev')")
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    python = f"/usr/bin/env python{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="gateway-dist-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / name)
        partial = output.with_name(output.name + ".partial")  # never a half-written file at OUTPUT
        subprocess.run(
            [str(shiv), "--console-script", "gateway", "--output-file", str(partial), "--python", python,
             "--reproducible", "--compressed", "--quiet", str(src)],
            check=True,
        )  # fmt: skip
        partial.replace(output)
    return output


def main() -> int:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist" / "gateway"
    built = build(output)
    print(f"{built} ({built.stat().st_size / 1e6:.1f} MB): run it as `{built} serve --config FILE`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
