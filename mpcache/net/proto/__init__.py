"""Generated protobuf / gRPC modules for ``proto/mpcache.proto`` (committed).

The generated code is committed so that a clean checkout runs without grpcio-tools.
Regenerate after editing the .proto (from the repository root)::

    python -m mpcache.net.proto

which runs::

    python -m grpc_tools.protoc -I proto --python_out=mpcache/net/proto \
        --pyi_out=mpcache/net/proto --grpc_python_out=mpcache/net/proto proto/mpcache.proto

and then rewrites the generated ``import mpcache_pb2`` in ``mpcache_pb2_grpc.py`` into a
package-relative import (protoc emits a top-level import that only works when this folder
is on ``sys.path``).  The generated modules check the protobuf / grpcio runtime versions
they were made with (protobuf >= the gencode version, grpcio >= 1.85).

Nothing is imported here on purpose: ``from mpcache.net.proto import mpcache_pb2``.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def regenerate() -> None:
    """Run protoc on proto/mpcache.proto and make the gRPC module's import relative."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
           f"--python_out={HERE}", f"--pyi_out={HERE}", f"--grpc_python_out={HERE}",
           str(ROOT / "proto" / "mpcache.proto")]
    subprocess.run(cmd, check=True)
    grpc_mod = HERE / "mpcache_pb2_grpc.py"
    src = grpc_mod.read_text()
    src = re.sub(r"^import mpcache_pb2 as", "from . import mpcache_pb2 as", src, flags=re.M)
    grpc_mod.write_text(src)
