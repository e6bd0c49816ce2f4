# Sourced by the *-setup.sh scripts and prereqs.sh:
#
#   apt_install_or_explain PURPOSE HINT PACKAGE...
#
# On Debian/Ubuntu as root, installs PACKAGEs with apt (APT_OPTIONS, e.g.
# --no-install-recommends, go to apt-get); elsewhere prints one line, "error: PURPOSE needs
# PACKAGE... (HINT)", and exits 1.
#
#   apt_get ARGS...
#
# apt-get ARGS, waiting while another apt holds its locks (an unattended upgrade, or a second
# set-up running beside this one): `apt-get update` does not wait for the lists' lock by
# itself, so a busy apt is retried every 10 s (APT_RETRY_SECONDS) for up to 60 tries; any other
# failure is reported at once, with apt's own words.
apt_get() {
  local out tries=0
  until out=$(DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" 2>&1); do
    if ! grep -q "Could not get lock" <<<"$out" || [ "$tries" -ge 60 ]; then
      printf '%s\n' "$out" >&2
      return 1
    fi
    if [ "$tries" = 0 ]; then echo "apt is busy (another apt holds its lock); waiting…" >&2; fi
    tries=$((tries + 1))
    sleep "${APT_RETRY_SECONDS:-10}"
  done
}

apt_install_or_explain() {
  local purpose=$1 hint=$2
  shift 2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* ($purpose)…"
    apt_get update -qq
    # shellcheck disable=SC2086  # APT_OPTIONS is a list of options
    apt_get install -y -qq ${APT_OPTIONS:-} "$@"
  else
    echo "error: $purpose needs $* ($hint)" >&2
    exit 1
  fi
}
