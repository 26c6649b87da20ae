# What the envs/ scripts share: die, usage and option parsing. Source it after setting
# SCRIPT (the script's name) and HELP (the sed range of its header comment, e.g. 2,13p).

die() { echo "$SCRIPT: $*" >&2; exit 2; }
usage() { sed -n "$HELP" "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

# parse_options "VALUE OPTIONS" "FLAG OPTIONS" "$@": --some-name VALUE sets SOME_NAME,
# --flag sets FLAG=1, -h/--help prints the usage; anything else is refused.
parse_options() {
  local values=" $1 " flags=" $2 " name var
  shift 2
  while [[ $# -gt 0 ]]; do
    name="${1#--}"
    var="$(tr 'a-z-' 'A-Z_' <<<"$name")"
    if [[ "$1" == -h || "$1" == --help ]]; then
      usage 0
    elif [[ "$values" == *" $name "* && $# -ge 2 ]]; then
      printf -v "$var" '%s' "$2"; shift 2
    elif [[ "$flags" == *" $name "* ]]; then
      printf -v "$var" 1; shift
    else
      echo "$SCRIPT: unknown option $1" >&2; usage 2
    fi
  done
}
