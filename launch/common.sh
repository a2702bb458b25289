# Shared by the launch scripts: dry-run printing and the config check. Source it; do not run it.

# DRY_RUN=1: print every command instead of running it, after checking the config loads.
DRY_RUN="${DRY_RUN:-0}"
PYTHON="${PYTHON:-python}"

# run CMD...: runs the command, or prints it (shell-quoted) in dry-run mode.
run() {
  if [[ "$DRY_RUN" == "1" ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# check_config CONFIG [OVERRIDES...]: loads and validates the config here, before anything is launched.
check_config() {
  local config="$1"; shift
  "$PYTHON" -m memagent_jax.check_config --config="$config" "$@"
}
