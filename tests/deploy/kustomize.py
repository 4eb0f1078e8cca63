"""Render the production overlay of deploy/k8s with kustomize (the Go module, built once
into the download cache) and check what it gives against the Kubernetes API's schemas: what
`kubectl apply -k deploy/k8s/overlays/production` would send. Part of `make deploy-check`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
VERSION = "v5.7.1"
KUBERNETES = "1.31.0"
BIN = Path(os.environ.get("KIZUNA_CACHE_DIR", "~/.cache/kizuna")).expanduser() / "go" / "bin"


def kustomize() -> Path:
    tool = BIN / f"kustomize-{VERSION}"
    if not tool.exists():
        go = shutil.which("go")
        if go is None:
            sys.exit("deploy-check: Go is needed to build kustomize (https://go.dev/dl/)")
        BIN.mkdir(parents=True, exist_ok=True)
        subprocess.run([go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{VERSION}"],
                       env={**os.environ, "GOBIN": str(BIN)}, check=True, timeout=900)
        (BIN / "kustomize").rename(tool)
    return tool


def main() -> int:
    overlay = ROOT / "deploy" / "k8s" / "overlays" / "production"
    rendered = subprocess.run([str(kustomize()), "build", str(overlay)], check=True,
                              capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example.com/analytics/kizuna:0.10.0"}, images
    assert all(d["metadata"].get("namespace") == "kizuna" for d in docs)
    print(f"deploy/k8s/overlays/production: {len(docs)} resources, valid for Kubernetes "
          f"{KUBERNETES} (kustomize {VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
