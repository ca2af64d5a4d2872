"""Shrink a Ray wheel so that it travels to an offline GPU machine with a small upload limit.

    python scripts/trim_ray_wheel.py wheelhouse/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl

Ray's wheel is ~79 MB, almost half of it the Java jar. This rewrites it in place without the
parts that running Ray Core, Ray Serve, Ray Data and Ray Train from Python never loads (the Java
jars, the dashboard's web client, RLlib, ray.llm), LZMA-compressed (zipfile, hence pip, reads
that), with a RECORD that lists exactly what is left, so `pip install` takes it as any wheel.
Result: ~30 MB. Used by scripts/gpu_wheelhouse.sh (WITH_SERVE=1).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

DROP = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/llm/")


def trim(path: Path) -> tuple[int, int]:
    before = path.stat().st_size
    tmp = path.with_suffix(".trimmed")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as dst:
        kept = [i for i in src.infolist() if not i.filename.startswith(DROP)]
        record = next(i for i in kept if i.filename.endswith(".dist-info/RECORD"))
        names = {i.filename for i in kept}
        for info in kept:
            data = src.read(info)
            if info is record:
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if l.split(",", 1)[0] in names) + "\n").encode()
            out = zipfile.ZipInfo(info.filename, info.date_time)
            out.external_attr = info.external_attr  # keeps the executables' mode (raylet, gcs_server)
            out.compress_type = zipfile.ZIP_LZMA
            dst.writestr(out, data)
    tmp.replace(path)
    return before, path.stat().st_size


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".whl"):
        sys.exit("usage: python scripts/trim_ray_wheel.py RAY_WHEEL.whl")
    before, after = trim(Path(sys.argv[1]))
    print(f"trim_ray_wheel: {sys.argv[1]}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
