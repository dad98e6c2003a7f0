#!/usr/bin/env bash
# Install the pinned OHIF v3 build (package.json "ohif") into viewer/ohif/dist/ (git-ignored).
#
# Only the package's prebuilt dist/ is served, so only its tarball is fetched,
# with npm (`npm pack`, which checks the registry's integrity), and its
# SHA-512 is checked again against the one pinned here. The package's own
# dependencies are build-time ones, already bundled into dist/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${OHIF_DIST_DIR:-$here/dist}"
read -r package version integrity < <(node -e '
  const o = require(process.argv[1]).ohif; console.log(o.package, o.version, o.integrity)' "$here/package.json")
if [ -f "$dest/.installed" ] && [ "$(cat "$dest/.installed")" = "$package@$version $integrity" ]; then
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
npm pack --silent --pack-destination "$work" "$package@$version" >/dev/null
tarball="$(ls "$work"/*.tgz)"
actual="$(node -e '
  const data = require("fs").readFileSync(process.argv[1]);
  console.log("sha512-" + require("crypto").createHash("sha512").update(data).digest("base64"))' "$tarball")"
if [ "$actual" != "$integrity" ]; then
    echo "OHIF: $package@$version has integrity $actual, expected $integrity" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist
# The build loads its code chunks from "/" (webpack's public path, fixed at
# build time); the product serves it under /ohif/.
grep -lZ '__webpack_require__.p = "/";' "$work"/package/dist/*.js \
    | xargs -0 -r sed -i 's|__webpack_require__.p = "/";|__webpack_require__.p = "/ohif/";|'
rm -rf "$dest.new"
mv "$work/package/dist" "$dest.new"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "$package@$version $integrity" > "$dest/.installed"  # the build, as rewritten for /ohif/
echo "OHIF $version installed in $dest"
