#!/usr/bin/env bash
# Refresh GraphiQL's browser bundles in src/inventory_graphql/api/graphiql_assets/vendor/
# from the npm registry, at the versions pinned in scripts/graphiql-assets/package-lock.json.
# The output is committed, so a machine without node (or without internet) still serves a
# working GraphiQL page; tests/api/test_graphiql_assets.py checks it against the lock.
#
# To change versions: edit scripts/graphiql-assets/package.json, run
# `npm install --package-lock-only --ignore-scripts` there, then this script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pins="$root/scripts/graphiql-assets"
out="$root/src/inventory_graphql/api/graphiql_assets/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cp "$pins/package.json" "$pins/package-lock.json" "$work/"
# --ignore-scripts: nothing from the packages runs here; only their files are copied.
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

rm -rf "$out"
mkdir -p "$out/LICENSES"
# package (its node_modules path) | file in the package | name here | licence file
# The explorer's UMD bundle inlines graphiql-explorer (OneGraph), so its licence ships
# too; @graphiql/plugin-explorer's tarball has no LICENSE file: it is the graphiql
# monorepo's (github.com/graphql/graphiql, MIT), which graphiql's tarball carries.
files=(
    "react|umd/react.production.min.js|react.production.min.js|react/LICENSE"
    "react-dom|umd/react-dom.production.min.js|react-dom.production.min.js|react-dom/LICENSE"
    "graphiql|graphiql.min.js|graphiql.min.js|graphiql/LICENSE"
    "graphiql|graphiql.min.css|graphiql.min.css|graphiql/LICENSE"
    "@graphiql/plugin-explorer|dist/index.umd.js|plugin-explorer.umd.js|graphiql/LICENSE"
    "@graphiql/plugin-explorer|dist/style.css|plugin-explorer.css|graphiql/LICENSE"
)
licences=(
    "react/LICENSE|react.txt"
    "react-dom/LICENSE|react-dom.txt"
    "graphiql/LICENSE|graphiql.txt"
    "@graphiql/plugin-explorer/node_modules/graphiql-explorer/LICENSE|graphiql-explorer.txt"
)
modules="$work/node_modules"
for entry in "${licences[@]}"; do
    IFS='|' read -r source name <<<"$entry"
    cp "$modules/$source" "$out/LICENSES/$name"
done
for entry in "${files[@]}"; do
    IFS='|' read -r package path name _ <<<"$entry"
    cp "$modules/$package/$path" "$out/$name"
done

# manifest.json: what each file is and its sha256, for the test and for people.
printf '%s\n' "${files[@]}" | MODULES="$modules" node -e '
const fs = require("fs");
const crypto = require("crypto");
const modules = process.env.MODULES;
const licenceName = {
  "react/LICENSE": "react.txt",
  "react-dom/LICENSE": "react-dom.txt",
  "graphiql/LICENSE": "graphiql.txt",
};
const lines = fs.readFileSync(0, "utf8").trim().split("\n");
const files = lines.map((line) => {
  const [pkg, path, name, licence] = line.split("|");
  const meta = JSON.parse(fs.readFileSync(`${modules}/${pkg}/package.json`, "utf8"));
  const body = fs.readFileSync(`${modules}/${pkg}/${path}`);
  return {
    file: name,
    package: pkg,
    version: meta.version,
    path,
    license: meta.license,
    license_file: `LICENSES/${licenceName[licence]}`,
    sha256: crypto.createHash("sha256").update(body).digest("hex"),
  };
});
const explorer = `${modules}/@graphiql/plugin-explorer/node_modules/graphiql-explorer/package.json`;
const bundled = JSON.parse(fs.readFileSync(explorer, "utf8"));
const manifest = {
  source: "npm registry, pinned by scripts/graphiql-assets/package-lock.json",
  refresh: "scripts/vendor-graphiql.sh",
  files,
  bundled: [
    {
      package: bundled.name,
      version: bundled.version,
      license: bundled.license,
      license_file: "LICENSES/graphiql-explorer.txt",
      inside: "plugin-explorer.umd.js",
    },
  ],
};
fs.writeFileSync(process.argv[1], JSON.stringify(manifest, null, 2) + "\n");
' "$out/manifest.json"
echo "vendored into $out:"
ls -l "$out"
