# Sourced by setup.sh and demo.sh: where this project's virtualenv lives.
#
# RD_VENV wins. Otherwise `.venv` in the project root: a folder is the virtualenv; a file is a PEP 832
# redirect (one line: the virtualenv's path, relative to the project root or absolute). A redirect into
# `.tox/` was written by tox for one of its own environments (tox >= 4.67 does that unless tox.ini says
# `venv_redirect = false`, as ours does): that environment is tox's to rebuild, so the redirect is removed
# and the project's own `.venv` folder takes its place. Any other redirect is the user's choice and is followed.
rd_venv_dir() {
  if [ -n "${RD_VENV:-}" ]; then
    printf '%s\n' "$RD_VENV"
    return
  fi
  if [ -f .venv ] && [ ! -d .venv ]; then
    local target
    target="$(head -n 1 .venv)"
    case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
    target="$(realpath -m "$target")"
    case "$target/" in
      "$(realpath -m .tox)"/*)
        echo "setup: .venv was tox's PEP 832 redirect to $target; replacing it by the project's virtualenv" >&2
        rm -f .venv ;;
      *)
        printf '%s\n' "$target"
        return ;;
    esac
  fi
  printf '%s\n' ".venv"
}
